"""All-or-nothing CSV imports: every line is checked before anything is written.

The parser only reads and reports; each domain supplies the check for one row and the bulk write.
It reads within bounds (a line's length, a field's size, the columns, the records), so one gigantic
cell, a line of millions of commas or millions of lines is refused, naming the line, before memory goes.
"""

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic import Field as PydanticField

from mdm.errors import Invalid, ProblemError
from mdm.validation import NUL, NUL_MESSAGE

MAX_REPORTED_ERRORS = 1000
# No MIS export has a cell of 16 KiB, a line of 1 MiB or 200 columns; each is refused, not read into memory.
MAX_FIELD_CHARS = 16 * 1024
MAX_LINE_CHARS = 1024 * 1024
MAX_COLUMNS = 200
# The default of MDM_IMPORT_MAX_ROWS: a large trust's whole roll, in one file.
DEFAULT_MAX_ROWS = 200_000
CSV_MEDIA_TYPES = {"text/csv", "application/csv", "text/plain", "application/vnd.ms-excel"}


class ImportResult(BaseModel):
    total: int
    created: int
    updated: int
    unchanged: int
    ignored_columns: list[str] = PydanticField(default_factory=list, description="Columns this import does not read.")


class RowError(ValueError):
    """One line's problems, each as (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
        self.problems = problems


def row_error_from_validation(exc: ValidationError) -> RowError:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"] if not isinstance(part, int)) or "row"
        problems.append((field, error["msg"]))
    return RowError(problems)


@dataclass
class ParsedCsv:
    rows: list[tuple[int, dict[str, str]]]
    ignored_columns: list[str] = field(default_factory=list)


def check_media_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in CSV_MEDIA_TYPES:
        raise ProblemError(415, f"Send the file as text/csv (got {media_type or 'no content type'}).")


def parse_csv(data: bytes, required: set[str], optional: set[str], max_rows: int = DEFAULT_MAX_ROWS) -> ParsedCsv:
    """Reads a CSV with a header line; `utf-8-sig` because spreadsheet exports often start with a BOM."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProblemError(422, f"The file is not UTF-8 text (byte {exc.start} is not valid UTF-8).") from exc
    # The limit is process-wide in the csv module; this parser is the service's only CSV reader.
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(_bounded_lines(io.StringIO(text, newline="")))
    try:
        header = [name.strip().lower() for name in _header_line(reader)]
        _check_columns(header, 1)
        missing = sorted(required - set(header))
        if missing:
            raise Invalid(
                f"The header line lacks the column(s): {', '.join(missing)}.",
                [{"line": 1, "field": name, "message": "missing column"} for name in missing],
            )
        rows = _records(reader, header, max_rows)
    except csv.Error as exc:
        raise Invalid(
            "The file is not valid CSV.", [{"line": reader.line_num, "field": None, "message": str(exc)}]
        ) from exc
    except _LineTooLongError as exc:
        raise Invalid(
            f"Line {exc.line} is longer than {MAX_LINE_CHARS:,} characters; no import has lines that long.",
            [{"line": exc.line, "field": None, "message": f"longer than {MAX_LINE_CHARS:,} characters"}],
        ) from exc
    _refuse_nul(header, rows)
    return ParsedCsv(rows=rows, ignored_columns=sorted(set(header) - required - optional))


class _LineTooLongError(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _bounded_lines(stream: io.StringIO) -> Iterator[str]:
    """The file's physical lines, refusing one over MAX_LINE_CHARS before the csv module splits it."""
    number = 0
    while line := stream.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise _LineTooLongError(number)
        yield line


def _header_line(reader: Any) -> list[str]:
    header = next(reader, [])
    if not header:
        raise ProblemError(422, "The file is empty: it needs a header line and one line per record.")
    return header


def _check_columns(fields: list[str], line: int) -> None:
    if len(fields) > MAX_COLUMNS:
        raise Invalid(
            f"Line {line} has {len(fields):,} columns; an import has at most {MAX_COLUMNS}.",
            [{"line": line, "field": None, "message": f"{len(fields):,} columns, at most {MAX_COLUMNS}"}],
        )


def _records(reader: Any, header: list[str], max_rows: int) -> list[tuple[int, dict[str, str]]]:
    rows: list[tuple[int, dict[str, str]]] = []
    for fields in reader:
        if len(fields) > len(header):
            raise Invalid(
                "A line has more fields than the header.",
                [{"line": reader.line_num, "field": None, "message": "more fields than the header"}],
            )
        values = {name: value.strip() for name, value in zip(header, fields, strict=False)}
        values.update((name, "") for name in header[len(fields) :])
        if not any(values.values()):
            continue
        if len(rows) == max_rows:
            raise ProblemError(
                413,
                f"The file has more than {max_rows:,} records (line {reader.line_num} is one too many); "
                "split it and import each part.",
                line=reader.line_num,
                max_rows=max_rows,
            )
        rows.append((reader.line_num, values))
    return rows


def _refuse_nul(header: list[str], rows: list[tuple[int, dict[str, str]]]) -> None:
    """Every cell with a NUL, in any column: no domain's row check needs to remember it."""
    errors: list[dict[str, Any]] = [
        {"line": 1, "field": name, "message": NUL_MESSAGE} for name in header if NUL in name
    ]
    errors += [
        {"line": line, "field": name, "message": NUL_MESSAGE}
        for line, values in rows
        for name, value in values.items()
        if NUL in value
    ]
    if errors:
        raise invalid_lines(errors)


def validate_rows(
    parsed: ParsedCsv,
    check_row: Callable[[dict[str, str]], Any],
    key_of: Callable[[Any], str],
    key_name: str,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[int, Any]]:
    """Checks every row and refuses duplicates of the key; raises Invalid listing every bad line."""
    errors: list[dict[str, Any]] = []
    checked: list[tuple[int, Any]] = []
    first_line: dict[str, int] = {}
    for count, (line, values) in enumerate(parsed.rows, start=1):
        try:
            row = check_row(values)
        except RowError as exc:
            errors.extend({"line": line, "field": f, "message": m} for f, m in exc.problems)
            continue
        key = key_of(row)
        if key in first_line:
            errors.append({"line": line, "field": key_name, "message": f"{key} is also on line {first_line[key]}"})
            continue
        first_line[key] = line
        checked.append((line, row))
        if progress and count % 1000 == 0:
            progress(1000)
    if errors:
        raise invalid_lines(errors)
    return checked


def invalid_lines(errors: list[dict[str, Any]]) -> Invalid:
    shown = errors[:MAX_REPORTED_ERRORS]
    more = len(errors) - len(shown)
    detail = f"{len(errors)} line(s) are invalid; nothing was imported. Fix them and send the whole file again."
    if more:
        detail += f" The first {len(shown)} are listed."
    return Invalid(detail, shown)


def chunks(items: list[Any], size: int = 1000) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
