"""A sensor table file → a DataFrame, or one line saying what the file is and how to read it.

What goes wrong with real exports, each named with a hint instead of a library's traceback:
an Excel workbook, a zip archive or another binary file given as a CSV; a `;`-separated file
with decimal commas (`--delimiter`, `--decimal`); a title or metadata line above the header
(`--skip-rows`); column names with control characters, or the same name twice (pandas would
silently rename the second `T1.1` and train on it). Library warnings never reach the terminal.
The time column is read in train/times.py.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import re
import statistics
import unicodedata
import warnings
import zipfile

from runtime.readings import GROUPED, MAX_ABOVE_HEADER, UNIT_HEADER, bare_name

SNIFF_BYTES = 64 * 1024
SNIFF_ROWS = 20
DELIMITERS = (",", ";", "\t", "|")
UNIT_AFTER = r"[^\d\s.,;:+-][^\d]{0,9}?"     # a unit written after a number: C, °C, %, m/s (train/cells.py)
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


class DataError(ValueError):
    """Input data that cannot be used, with a message naming what and what was expected."""


def delimiter_arg(text: str) -> str:
    """`--delimiter` text → one character (`tab` and `\\t` for a tab)."""
    d = DELIMITER_NAMES.get(text, text)
    if len(d) != 1 or d in "\r\n\"":
        raise ValueError(f"--delimiter {text!r}: expected one character such as ';' or '|', or tab")
    return d


def _shown(d: str) -> str:
    return "tab" if d == "\t" else repr(d)


def control_character(text: str) -> str | None:
    """The first control (or invisible formatting) character in `text`, a byte-order mark aside; None."""
    return next((ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf") and ch != "\ufeff"), None)


def check_names(names, where: str) -> None:
    """Refuse column names with control characters, and names given twice, naming them.

    Raises:
        DataError: a name with a control (or invisible formatting) character, or a duplicate.
    """
    for n in map(str, names):
        bad = control_character(n)
        if bad:
            raise DataError(f"{where}: column name {n[:60]!r} contains the control character {bad!r}; "
                             "rename the column (names are written into C, Markdown and MQTT topics)")
    seen, dup = set(), []
    for n in map(str, names):
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    if dup:
        raise DataError(f"{where}: column name(s) {', '.join(repr(d[:60]) for d in dup)} appear more than once "
                         "in the header; rename or drop the duplicates (each column needs its own name)")


def _head(path: str) -> bytes:
    """The file's first bytes, decompressed for .gz/.xz/.bz2 (what the parser will see)."""
    opener = _OPENERS.get(os.path.splitext(path)[1].lower(), open)
    try:
        with opener(path, "rb") as f:
            return f.read(SNIFF_BYTES)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def annotation_lines(head: bytes) -> int:
    """How many lines above the header are annotations (InfluxDB's annotated CSV: #group, #datatype,
    #default) or comments (`# logger 12`); stream skips such lines as it finds the header. A header
    written `#time,value` is no comment."""
    lines = head.decode("utf-8-sig", errors="replace").splitlines()
    n = next((i for i, line in enumerate(lines) if not _ANNOTATION.match(line)), len(lines))
    return n if n < len(lines) else 0


_ANNOTATION = re.compile(r"#(?:\s|$|group,|datatype,|default,)")


def _above_header(head: bytes, target: str | None) -> tuple:
    """(lines to skip, of them a logger's metadata lines) where no --skip-rows was given: annotation and
    comment lines, then the lines above the first naming the target."""
    first = annotation_lines(head)
    header = first if target is None else header_line(head, target, first)
    return header, header - first


def header_line(head: bytes, target: str, first: int = 0) -> int:
    """The line (0-based, from `first`) of the header as the device's stream finds it: the first of
    the next MAX_ABOVE_HEADER lines with a cell naming `target` (its unit aside), split by any of
    DELIMITERS; lines above it are a logger's metadata. `first` where no such line is near the top."""
    lines = head.decode("utf-8-sig", errors="replace").splitlines()[first:first + MAX_ABOVE_HEADER + 1]
    for i, line in enumerate(lines):
        for d in DELIMITERS:
            if d in line and any(c.strip() == target or bare_name(c.strip()) == target
                                 for c in next(csv.reader([line], delimiter=d))):
                return first + i
    return first


def _binary_kind(path: str, head: bytes) -> str | None:
    """What a non-text file is, or None for text (or a zipped CSV pandas reads)."""
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a zip archive"
        if any(n.startswith("xl/") for n in names):
            return "an Excel workbook"
        if path.lower().endswith(".zip") and len(names) == 1:
            return None                            # a zipped CSV: pandas reads it
        return "a zip archive"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return "an Excel workbook (.xls)"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed (a name ending .csv.gz reads it)"
    if b"\x00" in head:
        half = len(head) // 2
        if half and max(head[1::2].count(0), head[0::2].count(0)) > 0.9 * half:
            return "UTF-16 text (without a byte-order mark)"
        return "a binary file"
    return None


def _rows(text: str, delimiter: str, skip_rows: int, cut: bool) -> list:
    """The first SNIFF_ROWS rows after the skipped lines, split by `delimiter` (`cut`: the text is
    the file's head, so its last row may be incomplete and is left out)."""
    lines = io.StringIO(text)
    for _ in range(skip_rows):
        lines.readline()
    rows = []
    for row in csv.reader(lines, delimiter=delimiter):
        if row:
            rows.append(row)
        if len(rows) > SNIFF_ROWS:
            break
    return rows[:SNIFF_ROWS] if len(rows) > SNIFF_ROWS or not cut or len(rows) < 3 else rows[:-1]


def _other_delimiter(rows: list, delimiter: str) -> str | None:
    """Another delimiter that splits a one-column header and the line below it alike, or None."""
    if not rows or len(rows[0]) != 1:
        return None
    header = rows[0][0]
    for d in (d for d in DELIMITERS if d != delimiter and d in header):
        if len(rows) < 2 or len(header.split(d)) == len(delimiter.join(rows[1]).split(d)):
            return d
    return None


def _decimal_of(rows: list, delimiter: str) -> str:
    """The decimal mark of a file's first rows: a comma where numbers show commas (`21,5`) and none a
    point, in a file whose delimiter is not the comma; else a point. Three digits after the comma
    (`2,004`) could be thousands and tell nothing (train/cells.py names both readings); so could
    three after a point (`1.025`, a thousand and 25 beside decimal commas), and `1.025,7` is a comma."""
    if delimiter == ",":
        return "."
    cells = [c.strip() for r in rows[1:] for c in r]
    grouped = GROUPED["."]
    commas = sum(1 for c in cells if re.fullmatch(rf"[-+]?\d+,(?:\d\d?|\d{{4,}})(?:\s*{UNIT_AFTER})?", c)
                 or (grouped.fullmatch(c) and "," in c))
    points = sum(1 for c in cells if re.fullmatch(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?", c) and not grouped.fullmatch(c))
    return "," if commas and not points else "."


def _check_layout(path: str, rows: list, delimiter: str, skip_rows: int) -> None:
    """One-column headers (another delimiter) and short first lines (metadata above the header)."""
    if not rows:
        raise DataError(f"{path}: no header line" + (f" after the {skip_rows} skipped line(s)" if skip_rows else ""))
    header = rows[0]
    d = _other_delimiter(rows, delimiter)
    if d is not None:
        raise DataError(f"{path}: the header is one column containing {_shown(d)}, not --delimiter "
                        f"{_shown(delimiter)}: pass --delimiter {_shown(d)} (or leave it out: it is found)")
    body = [len(r) for r in rows[1:]]
    if body and all(len(r) <= len(header) or not any(c.strip() for c in r[len(header):]) for r in rows[1:]):
        return                    # a delimiter after each data line's last field (read as it is)
    if body and len(header) < statistics.median(body):
        width = statistics.median(body)
        skip = next((i for i, r in enumerate(rows) if len(r) >= width), 1)
        raise DataError(f"{path}: line {skip_rows + 1} has {len(header)} field(s) and the lines below it "
                        f"{width:g}: if it is a title or metadata line above the header, pass --skip-rows "
                        f"{skip_rows + skip}; otherwise every line needs one field per column")


def _layout(path: str, head: bytes, delimiter: str | None, decimal: str | None, skip_rows: int) -> tuple:
    """(delimiter, decimal mark) of a CSV from its head, given or found, its header and first lines
    checked (_check_layout); a zip's as given (or `,` and `.`)."""
    sep, dec = delimiter or ",", decimal or "."
    if not path.lower().endswith(".zip"):
        text = head.decode("utf-8-sig", errors="replace")
        rows = _rows(text, sep, skip_rows, len(head) == SNIFF_BYTES)
        found = _other_delimiter(rows, sep) if delimiter is None else None
        if found is not None:
            sep, rows = found, _rows(text, found, skip_rows, len(head) == SNIFF_BYTES)
        _check_layout(path, rows, sep, skip_rows)
        check_names(rows[0], path)
        dec = decimal or _decimal_of(rows, sep)
    if sep == dec:
        raise DataError(f"{path}: its fields are delimited by {_shown(sep)}, which --decimal {dec} names as the decimal "
                        f"mark too; expected a file delimited by another character (';' or tab) for decimal commas")
    return sep, dec


def read_table(path: str, delimiter: str | None = None, decimal: str | None = None, skip_rows: int = 0,
               text_col: str | None = None, target: str | None = None):
    """Read a CSV (optionally .gz/.xz/.bz2/.zip) or Parquet file into a DataFrame; `df.attrs["read_as"]`:
    the (delimiter, decimal mark) it was read with, given or found (`;`, tab or `|` where the header is
    one column otherwise; decimal commas in a file of them: _decimal_of).

    text_col: a CSV column read as the text it is (a series id: 1, 01 and 1.0 are three sensors,
    NA or null one more; only an empty cell is missing), not as numbers. target: without skip_rows,
    the header is the first line near the top naming it (`header_line`); `df.attrs["above_header"]`
    counts the metadata lines skipped above it.

    Raises:
        DataError: a missing, binary or malformed file, or bad column names; the message names
            what the file is and the option that reads it (--delimiter, --decimal, --skip-rows).
    """
    import pandas as pd
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    head = _head(path)
    if path.endswith((".parquet", ".pq")) or head.startswith(b"PAR1"):
        df = _read(path, lambda: pd.read_parquet(path))
        check_names(df.columns, path)
        df.attrs["header_units"] = parquet_units([path], os.path.dirname(path))
        return df
    kind = _binary_kind(path, head)
    if kind is not None:
        raise DataError(f"{path} is {kind}, expected a CSV text file (export it as CSV, UTF-8)")
    skip_rows, above = (skip_rows, 0) if skip_rows else _above_header(head, target)
    sep, dec = _layout(path, head, delimiter, decimal, skip_rows)
    text = {text_col: str} if text_col is not None else None
    # skipinitialspace: `time, node, value` reads as the device's split_line reads it
    df = _read(path, lambda: pd.read_csv(path, sep=sep, decimal=dec, skiprows=skip_rows or None,
                                         low_memory=False, index_col=False, dtype=text, skipinitialspace=True))
    if path.lower().endswith(".zip"):
        check_names(df.columns, path)
    if dec != ".":
        _decimal_text(df, dec, text_col)
    if text_col in df.columns and df[text_col].isna().any():     # NA, null, nan... are ids too: read them again
        df[text_col] = _read(path, lambda: pd.read_csv(path, sep=sep, skiprows=skip_rows or None, usecols=[text_col],
                                                       dtype=str, keep_default_na=False, index_col=False,
                                                       skipinitialspace=True))[text_col]
    df.attrs["read_as"], df.attrs["above_header"] = (sep, dec), above
    return df


def _decimal_text(df, decimal: str, text_col) -> None:
    """In place: the cells of text columns that are numbers with this decimal mark, with a point.
    pandas applies `decimal` only to columns it reads as numbers, so one `#DIV/0!` or `--` kept a
    whole column of `21,25` as text, and none of it read."""
    number = rf"\s*[-+\u2212]?\d+(?:{re.escape(decimal)}\d+)?(?:\s*{UNIT_AFTER})?\s*"     # 21,25 and 21,25 °C
    for col in df.columns:
        if col == text_col or not is_text(df[col]):
            continue
        cells = df[col].astype(str)
        numeric = cells.str.fullmatch(number) & df[col].notna()
        if numeric.any():
            df[col] = df[col].where(~numeric, cells.str.replace(decimal, ".", n=1, regex=False))


def is_text(col) -> bool:
    """Whether a DataFrame column holds text (pandas' object or string dtypes)."""
    return str(col.dtype) in ("object", "str", "string")


PARQUET_ENDS = (".parquet", ".pq")
CSV_ENDS = (".csv", ".csv.gz", ".csv.xz", ".csv.bz2", ".tsv", ".txt")


def read_folder(path: str, series_col: str | None = None, delimiter: str | None = None, decimal: str | None = None,
                skip_rows: int = 0, target: str | None = None):
    """A folder of many series → (one long-format DataFrame, its series column).

    A Parquet dataset (hive folders such as device=.../node=.../part-*.parquet, as `flash collect`
    writes) is read whole, its partition keys as text (node=1 and node=01 are two ids); its series
    is `series_col`, else node (device/node in a column `series` when there are several devices),
    else its last partition key. A folder of CSVs: one series per file, in a column `series_col`
    (default `series`): the file's stem, with its subfolders (site2/a.csv is site2/a).

    Raises:
        DataError: a folder with neither Parquet nor CSV files, or without the series column; two
            files naming one series; a CSV without the `target` column (a stray file), named.
    """
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    if any(f.endswith(PARQUET_ENDS) for f in files):
        return _read_dataset(path, files, series_col)
    csvs = [f for f in files if f.lower().endswith(CSV_ENDS)]
    if not csvs:
        raise DataError(f"{path} is a folder with no .csv or .parquet files; expected one CSV per series "
                        "(the file name is the series id) or a Parquet dataset partitioned by series")
    import pandas as pd
    series_col, parts, named, units = series_col or "series", [], {}, {}
    for f in csvs:
        rel = os.path.relpath(f, path).replace(os.sep, "/")
        sid = rel[:-len(next(e for e in CSV_ENDS if rel.lower().endswith(e)))]
        if sid in named:
            raise DataError(f"{path}: {named[sid]} and {rel} both name series {sid!r}; expected one file per series")
        named[sid] = rel
        df = read_table(f, delimiter, decimal, skip_rows, target=target)
        if target is not None and target not in [bare_name(c) for c in map(str, df.columns)]:
            header_below(df, target, f, skip_rows)
            raise DataError(f"{f} has no column {target!r} (its columns: {', '.join(map(str, df.columns))[:200]}); "
                            f"expected one CSV per series in {path}, each with the target: move other files out")
        _one_unit_each(units, split_unit_headers(df), rel, path)
        parts.append(df.assign(**{series_col: sid}))
    out = pd.concat(parts, ignore_index=True)
    out.attrs["header_units"] = {name: unit for name, (unit, _) in units.items()}
    out.attrs["read_as"] = parts[0].attrs.get("read_as")
    out.attrs["above_header"] = sum(p.attrs.get("above_header", 0) for p in parts)
    return out, series_col


def _one_unit_each(units: dict, found: dict, rel: str, path: str) -> None:
    """Add one file's header units ({name: unit}) to a folder's ({name: (unit, the file)}): `value
    [degC]` in one file and `value` in another are one column; two units for it are refused."""
    for name, unit in found.items():
        first, where = units.setdefault(name, (unit, rel))
        if first != unit:
            raise DataError(f"{path}: column {name!r} is in {first} in {where} and in {unit} in {rel}; "
                            "expected one unit per column (convert one of the files)")


def _read_dataset(path: str, files: list, series_col: str | None):
    """read_folder's Parquet dataset: (the DataFrame, its series column)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as ds
    keys = [p.split("=", 1)[0] for p in os.path.relpath(files[-1], path).split(os.sep)[:-1] if "=" in p]
    text = ds.partitioning(pa.schema([(k, pa.string()) for k in keys]), flavor="hive") if keys else "hive"
    df = _read(path, lambda: pd.read_parquet(path, partitioning=text))
    check_names(df.columns, path)
    for k in keys:                    # plain text ids
        df[k] = df[k].astype(str)
    if series_col is None and "node" in df.columns:
        series_col = "node"
        if "device" in df.columns and df["device"].nunique() > 1:
            df["series"], series_col = df["device"] + "/" + df["node"], "series"
    series_col = series_col or (keys[-1] if keys else None)
    df = _without_capture_columns(df)
    if series_col is None or series_col not in df.columns:
        raise DataError(f"{path}: a Parquet dataset without the series column {series_col or 'node'}; "
                        "name it with --series-col (columns are: " + ", ".join(map(str, df.columns)) + ")")
    df.attrs["header_units"] = parquet_units([f for f in files if f.endswith(PARQUET_ENDS)], path)
    return df, series_col


def parquet_units(files: list, path: str) -> dict:
    """{column: unit} from the Parquet files' field metadata (`flash collect` writes each reading
    column's unit there); two units for one column are refused, naming both files (as a folder of
    CSVs' headers are: _one_unit_each). `path`: the dataset's folder, which the names are relative to."""
    import pyarrow.parquet as pq
    units = {}
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (OSError, ValueError):           # (an unreadable file is named when the data is read)
            continue
        found = {field.name: (field.metadata or {}).get(b"unit") for field in schema}
        _one_unit_each(units, {k: v.decode("utf-8", errors="replace") for k, v in found.items() if v},
                       os.path.relpath(f, path), path)
    return {name: unit for name, (unit, _) in units.items()}


def _without_capture_columns(df):
    """A dataset `flash collect` wrote, without the capture's own columns (runtime/capture.py names
    them: seq, period, period_s, bundle_id, target, and the old model's forecast_k, lo80_k, hi95_k):
    they are no readings, and the device never has them. Named in `df.attrs["capture_columns"]`
    for the data report. Before, period_s stopped training as a constant column, and the counters
    and the old model's forecasts would have been the new model's inputs."""
    from runtime.capture import FIXED_COLUMNS, OUTPUT_COLUMN
    if not set(FIXED_COLUMNS) <= set(map(str, df.columns)):
        return df
    own = [c for c in map(str, df.columns) if (c in FIXED_COLUMNS and c != "time") or OUTPUT_COLUMN.fullmatch(c)]
    out = df.drop(columns=own)
    out.attrs["capture_columns"] = own
    return out


def split_unit_headers(df) -> dict:
    """`name[unit]` and `name [unit]` column headers become `name`; returns {name: unit}."""
    units, rename = {}, {}
    for c in map(str, df.columns):
        m = UNIT_HEADER.match(c)
        if m and m.group(1):
            rename[c], units[m.group(1)] = m.group(1), m.group(2).strip()
    if rename:
        df.rename(columns=rename, inplace=True)
    return units


def header_below(df, target: str, path: str, skip_rows: int) -> None:
    """A target that is no column but a cell of one of the first rows: the header is lower down."""
    if target in map(str, df.columns):
        return
    for i in range(min(len(df), 10)):
        if target in df.iloc[i].astype(str).str.strip().to_list():
            raise DataError(f"{path}: target column '{target}' is not in the header line but in line "
                            f"{skip_rows + i + 2}: pass --skip-rows {skip_rows + i + 1} to start at that line")


def _read(path: str, reader):
    """`reader()` with library warnings kept off the terminal and its errors as one DataError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return reader()
    except ImportError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at {e.start}); "
                         "export it as CSV, UTF-8") from None
    except Exception as e:  # pandas raises many types for unreadable files
        text = str(e).strip().splitlines()[-1:] or [""]
        raise DataError(f"cannot read {path} as a table: {type(e).__name__}: {text[0][:200]}") from None
