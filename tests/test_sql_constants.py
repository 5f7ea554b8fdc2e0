"""one_of: the code's own constants written into a statement, on both backends, and nothing else."""

import pytest
from sqlmodel import select

from mdm.database import Database, one_of
from mdm.ids import new_id, utcnow
from mdm.people.models import Person


def _person(database: Database, kind: str) -> str:
    with database.writing() as session:
        now = utcnow()
        person = Person(
            id=new_id(), external_id=new_id(), kind=kind, display_name=f"A {kind}", created_at=now, updated_at=now
        )
        session.add(person)
    return person.id


def test_one_of_finds_the_rows_whose_column_holds_one_of_the_constants(database: Database) -> None:
    learner, staff = _person(database, "learner"), _person(database, "staff")
    statement = select(Person.id).where(one_of(Person.kind, ("learner", "guest")))
    with database.reading() as session:
        assert set(session.exec(statement)) == {learner}  # type: ignore[call-overload]
    with database.reading() as session:
        assert set(session.exec(select(Person.id).where(~one_of(Person.kind, ("learner",))))) == {staff}  # type: ignore[call-overload]


@pytest.mark.parametrize("constants", [["learner' OR '1'='1"], ["a b"], []])
def test_one_of_refuses_anything_but_word_constants(constants: list[str]) -> None:
    # Written into the SQL itself, so a quote must never get through, whoever calls it.
    with pytest.raises(ValueError, match="word-character constants"):
        one_of(Person.kind, constants)
