"""Reports for technicians: the state of the fleet, and the list of devices to chase."""

from collections import Counter
from collections.abc import Iterator

from sqlmodel import Session, col, select

from mdm.csv_export import csv_lines
from mdm.devices.models import Device
from mdm.people.models import Person


def summary(session: Session) -> dict[str, object]:
    by_status: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = {}
    by_rule: Counter[str] = Counter()
    statement = select(Device.category, Device.compliance_status, Device.compliance_failures).where(
        Device.state == "enrolled"
    )
    for category, status, failures in session.exec(statement.execution_options(yield_per=5000)):
        by_status[status] += 1
        by_category.setdefault(category, Counter())[status] += 1
        by_rule.update({failure["rule"] for failure in failures})
    return {
        "by_status": dict(by_status),
        "by_category": {k: dict(v) for k, v in sorted(by_category.items())},
        "by_rule": dict(by_rule.most_common()),
    }


def noncompliant_csv(session: Session) -> Iterator[str]:
    """Streams one line per non-compliant device, with the person it belongs to and every reason."""
    return csv_lines(_noncompliant_rows(session))


def _noncompliant_rows(session: Session) -> Iterator[list[object]]:
    yield [
        "device_id",
        "serial",
        "asset_tag",
        "category",
        "person_external_id",
        "person_name",
        "failing_since",
        "quarantined",
        "reasons",
    ]
    statement = (
        select(Device, Person.external_id, Person.display_name)
        .join(Person, col(Person.id) == Device.person_id, isouter=True)
        .where(Device.state == "enrolled", Device.compliance_status == "non_compliant")
        .order_by(Device.id)
        .execution_options(yield_per=2000)
    )
    for device, external_id, name in session.exec(statement):
        reasons = "; ".join(f"{f['rule']}: {f['detail']}" for f in device.compliance_failures)
        yield [
            device.id,
            device.serial,
            device.asset_tag,
            device.category,
            external_id,
            name,
            device.compliance_failing_since.isoformat() if device.compliance_failing_since else None,
            "yes" if device.quarantined_at else "no",
            reasons,
        ]
