"""A table a user wrote as CSV (labels.csv, prompts.csv, a sampling prompts file): how it is read, once.

What users' tools write: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" has one), a header row
naming the columns in any case and spacing, quoted fields holding commas or line breaks, blank lines. Rows are
numbered as a spreadsheet shows them (the header is row 1), so a fault names the row the user sees.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.io.sources.common import reading

# How much of a first row a fault quotes: enough to recognise it, never a whole file on one line.
QUOTED = 60


@dataclass(frozen=True)
class TableRow:
    number: int  # as a spreadsheet numbers it: the header is row 1
    values: dict[str, str]  # column (lower case) → its text, stripped; "" where the row stops short


def read_table(path: str | Path, what: str, required: tuple[str, ...], optional: tuple[str, ...] | None = None,
               ) -> list[TableRow]:
    """The rows of a CSV file with a header naming at least the `required` columns. `optional` None: other
    columns are allowed and ignored (a labels.csv exported with more columns); a tuple: the only other columns
    allowed, so that a misspelt column is a fault rather than a setting silently left at its default."""
    path = Path(path)
    with reading(path, what):
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(path, f"is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}): "
                                   "save it as CSV UTF-8") from None
        records = list(csv.reader(io.StringIO(text, newline="")))
    start = next((i for i, r in enumerate(records) if any(c.strip() for c in r)), None)
    if start is None:
        raise InputError(path, f"is empty; it needs a header row naming its columns {','.join(required)}")
    header = [c.strip().lower() for c in records[start]]
    missing = [c for c in required if c not in header]
    if missing:
        first = " ".join(",".join(records[start]).split())
        first = first if len(first) <= QUOTED else first[:QUOTED] + "..."
        raise InputError(path, f"needs a header row naming its columns {','.join(required)} "
                               f"(no column {', '.join(missing)}); its first row is '{first}'")
    named = [c for c in header if c]
    twice = next((c for c in named if named.count(c) > 1), None)
    if twice:
        raise InputError(path, f"names the column '{twice}' twice in its header")
    if optional is not None:
        unknown = [c for c in named if c not in required + optional]
        if unknown:
            raise InputError(path, f"has a column '{unknown[0]}', which is not one of "
                                   f"{', '.join(required + optional)}")
    rows = []
    for i, record in enumerate(records[start + 1:], start=start + 2):
        if not any(c.strip() for c in record):
            continue
        if any(c.strip() for c in record[len(header):]):
            raise InputError(path, f"row {i} has {len(record)} fields for {len(header)} columns: a value that "
                                   "holds a comma must be in double quotes")
        rows.append(TableRow(i, {c: record[k].strip() if k < len(record) else ""
                                 for k, c in enumerate(header) if c}))
    if not rows:
        raise InputError(path, "has no rows below its header")
    return rows
