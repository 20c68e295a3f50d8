"""Reading dataset files as text: lines, JSON Lines objects and CSV/TSV rows.

Every reader here turns what is wrong with a file (missing, not UTF-8, malformed JSON, a row too
short) into a `DataError` naming the file and line, so the format loaders above it only check
fields.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..data import DataError


def official_dir(folder: Path) -> Path:
    """Where a release's own files are read: `folder`/official when that subfolder exists (then
    only there: files beside it are not read), else `folder`."""
    return folder / "official" if (folder / "official").is_dir() else folder


def require_file(path: Path) -> Path:
    """`path` if it is a file; else a DataError saying whether it is missing or a folder."""
    if not path.is_file():
        raise DataError("a folder, not a file" if path.is_dir() else "file not found", path=str(path))
    return path


def _read_text(path: Path) -> str:
    """The whole file as text (UTF-8, a leading byte-order mark dropped); bytes that are not
    UTF-8 are a DataError naming the line and column where they start."""
    data = require_file(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _not_utf8(path, line, data, e, line_start=data.rfind(b"\n", 0, e.start) + 1) from None


def _not_utf8(path: Path, line: int, data: bytes, e: UnicodeDecodeError, line_start: int = 0) -> DataError:
    """The DataError for bytes that are not UTF-8: the line, and the column where they start."""
    return DataError(f"not UTF-8 text: byte 0x{data[e.start]:02x} at column {e.start - line_start + 1} "
                     f"({e.reason})", path=str(path), line=line)


def read_lines_each(path: Path):
    """Yield (line number, text) per line, or (line number, DataError) for a line whose bytes are
    not UTF-8, naming its column: a lenient reader skips that line and keeps the others."""
    data = require_file(path).read_bytes()
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield n, _not_utf8(path, n, raw, e)


class _DuplicateKey(Exception):
    pass


def _object_without_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):   # the rare bad line: find which key
        keys = [key for key, _ in pairs]
        raise _DuplicateKey(next(key for i, key in enumerate(keys) if key in keys[:i]))
    return obj


def parse_json_line(line: str, where: dict) -> dict:
    """One JSON Lines line as an object; anything else (malformed or too deeply nested JSON, an
    integer too long to convert, not an object, an object with a key written twice, whose first
    value plain JSON would drop) is a DataError at `where` ({"path", "line"})."""
    try:
        obj = json.loads(line, object_pairs_hook=_object_without_duplicate_keys)
    except _DuplicateKey as e:
        raise DataError(f"key {e.args[0]!r} written twice in one object (JSON would keep the last one "
                        f"and drop the first)", **where) from None
    except json.JSONDecodeError as e:  # e.msg may end in "at" ("Unterminated string starting at")
        at = "" if e.msg.endswith(" at") else " at"
        # A whole JSON array (or a pretty-printed object) where one object per line belongs.
        hint = ("; JSON Lines holds one object per line, not an array or an object spread over lines"
                if where.get("line") == 1 and line.strip() in ("[", "{") else "")
        raise DataError(f"malformed JSON: {e.msg}{at} column {e.colno}{hint}", **where) from None
    except RecursionError:
        raise DataError("malformed JSON: nested too deeply", **where) from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise DataError(f"malformed JSON: {e}", **where) from None
    if not isinstance(obj, dict):
        hint = "; JSON Lines holds one object per line, not an array" if isinstance(obj, list) and where.get("line") == 1 else ""
        raise DataError(f"expected a JSON object, got {type(obj).__name__}{hint}", **where)
    if "\\u" in line:   # only an escape can make a lone surrogate, which no tokenizer or file takes
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(f"a \\u escape of a lone surrogate (U+{ord(e.object[e.start]):04X}) is not text: "
                            f"write the character itself or a valid surrogate pair", **where) from None
    return obj


def check_record(raw, field: str, required: tuple[str, ...], where: dict) -> dict:
    """`raw` if it is a JSON object holding every `required` key; else a DataError naming the
    file, line and field (e.g. "turns[3].role")."""
    if not isinstance(raw, dict):
        raise DataError("expected an object", field=field, **where)
    for key in required:
        if key not in raw:
            raise DataError("missing required field", field=f"{field}.{key}", **where)
    return raw


def check_text(raw: dict, field: str, where: dict) -> str:
    """raw["text"] if it is a string; else a DataError naming field.text."""
    if not isinstance(raw["text"], str):
        raise DataError("expected a string", field=f"{field}.text", **where)
    return raw["text"]


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (split at \\n only), non-UTF-8 bytes a DataError."""
    return _read_text(path).split("\n")


def read_jsonl(path: Path):
    """Yield (line number, object) for each non-blank line; malformed JSON is a DataError."""
    for n, line in enumerate(read_lines(path), 1):
        if line.strip():  # a trailing newline or blank separator line is harmless
            yield n, parse_json_line(line, {"path": str(path), "line": n})


def read_csv(path: Path, delimiter: str, columns) -> csv.DictReader:
    """A DictReader over the whole file (see _read_text) that has every name in `columns`."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    try:
        fieldnames = reader.fieldnames or []
    except csv.Error as e:
        raise DataError(f"malformed header: {e}", path=str(path), line=1) from None
    for col in columns:
        if col not in fieldnames:
            raise DataError("missing column", path=str(path), line=1, field=col)
    return reader


def csv_rows(reader: csv.DictReader, path: Path, columns):
    """Yield (line number, row) with every name in `columns` present: a row too short to have
    one, a row longer than the header (an unquoted delimiter inside a field shifts every later
    column), or a line the csv module cannot read, is a DataError."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"malformed row: {e}", path=str(path), line=reader.line_num) from None
        if row.get(None):   # DictReader keeps the fields past the header under the key None
            raise DataError(f"row has {len(reader.fieldnames) + len(row[None])} fields, the header "
                            f"{len(reader.fieldnames)} (a delimiter inside a field must be quoted)",
                            path=str(path), line=reader.line_num)
        for col in columns:
            if row.get(col) is None:
                n = sum(v is not None for k, v in row.items() if k is not None)
                raise DataError(f"row has {n} field(s), too few to reach this column",
                                path=str(path), line=reader.line_num, field=col)
        yield reader.line_num, row
