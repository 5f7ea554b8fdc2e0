"""CSV the service writes, made safe to open in a spreadsheet.

Excel, LibreOffice and Google Sheets read a cell that starts with `=`, `+`, `-` or `@` as a formula
(and some skip a leading tab or carriage return first), so a learner named `=HYPERLINK(...)` would run
in the technician's spreadsheet. OWASP's rule: prefix such a cell with a single quote, which the
spreadsheet shows as text. Every CSV writer goes through `csv_lines`, so no export can forget it.
"""

import csv
import io
from collections.abc import Iterable, Iterator

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def csv_lines(rows: Iterable[Iterable[object]]) -> Iterator[str]:
    """One CSV line per row, every cell neutralised; lazy, so a large export streams."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow([safe_cell(value) for value in row])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
