"""A sensor table file → a DataFrame, or one line saying what the file is and how to read it.

What goes wrong with real exports, each named with a hint instead of a library's traceback:
an Excel workbook, a zip archive or another binary file given as a CSV; a `;`-separated file
with decimal commas (`--delimiter`, `--decimal`); a title or metadata line above the header
(`--skip-rows`); column names with control characters, or the same name twice (pandas would
silently rename the second `T1.1` and train on it); naive and aware times mixed in one column.
Library warnings never reach the terminal. The time column is read by runtime/times.py's rule:
naive times on the data's clock (`--timezone`, or the fixed `--utc-offset-hours`), aware ones
converted to it.
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
from datetime import datetime, timedelta

import numpy as np

from runtime.times import EARLIEST, LATEST, MS_ABOVE, SERIAL_DAYS, BundleClock

SNIFF_BYTES = 64 * 1024
SNIFF_ROWS = 20
DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
TIME_NAMES = ("time", "timestamp", "date", "datetime", "ts")
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


def _check_layout(path: str, rows: list, delimiter: str, skip_rows: int) -> None:
    """One-column headers (another delimiter) and short first lines (metadata above the header)."""
    if not rows:
        raise DataError(f"{path}: no header line" + (f" after the {skip_rows} skipped line(s)" if skip_rows else ""))
    header = rows[0]
    if len(header) == 1:          # another delimiter splits the header and the next line alike
        for d in (d for d in DELIMITERS if d != delimiter and d in header[0]):
            if len(rows) < 2 or len(header[0].split(d)) == len(delimiter.join(rows[1]).split(d)):
                raise DataError(f"{path}: the header is one column containing {_shown(d)}: pass --delimiter "
                                f"{_shown(d)} (and --decimal , if numbers use decimal commas)")
    body = [len(r) for r in rows[1:]]
    if body and all(len(r) <= len(header) or not any(c.strip() for c in r[len(header):]) for r in rows[1:]):
        return                    # a delimiter after each data line's last field (read as it is)
    if body and len(header) < statistics.median(body):
        width = statistics.median(body)
        skip = next((i for i, r in enumerate(rows) if len(r) >= width), 1)
        raise DataError(f"{path}: line {skip_rows + 1} has {len(header)} field(s) and the lines below it "
                        f"{width:g}: if it is a title or metadata line above the header, pass --skip-rows "
                        f"{skip_rows + skip}; otherwise every line needs one field per column")


def read_table(path: str, delimiter: str | None = None, decimal: str = ".", skip_rows: int = 0,
               text_col: str | None = None):
    """Read a CSV (optionally .gz/.xz/.bz2/.zip) or Parquet file into a DataFrame.

    text_col: a CSV column read as the text it is (a series id: 1, 01 and 1.0 are three sensors,
    NA or null one more; only an empty cell is missing), not as numbers.

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
        return df
    kind = _binary_kind(path, head)
    if kind is not None:
        raise DataError(f"{path} is {kind}, expected a CSV text file (export it as CSV, UTF-8)")
    sep = delimiter or ","
    if not path.lower().endswith(".zip"):
        rows = _rows(head.decode("utf-8-sig", errors="replace"), sep, skip_rows, len(head) == SNIFF_BYTES)
        _check_layout(path, rows, sep, skip_rows)
        check_names(rows[0], path)
    text = {text_col: str} if text_col is not None else None
    df = _read(path, lambda: pd.read_csv(path, sep=sep, decimal=decimal, skiprows=skip_rows or None,
                                         low_memory=False, index_col=False, dtype=text))
    if path.lower().endswith(".zip"):
        check_names(df.columns, path)
    if decimal != ".":
        _decimal_text(df, decimal, text_col)
    if text_col in df.columns and df[text_col].isna().any():     # NA, null, nan... are ids too: read them again
        df[text_col] = _read(path, lambda: pd.read_csv(path, sep=sep, skiprows=skip_rows or None, usecols=[text_col],
                                                       dtype=str, keep_default_na=False, index_col=False))[text_col]
    return df


def _decimal_text(df, decimal: str, text_col) -> None:
    """In place: the cells of text columns that are numbers with this decimal mark, with a point.
    pandas applies `decimal` only to columns it reads as numbers, so one `#DIV/0!` or `--` kept a
    whole column of `21,25` as text, and none of it read."""
    number = rf"\s*[-+]?\d+(?:{re.escape(decimal)}\d+)?\s*"
    for col in df.columns:
        if col == text_col or str(df[col].dtype) not in ("object", "str", "string"):
            continue
        cells = df[col].astype(str)
        numeric = cells.str.fullmatch(number) & df[col].notna()
        if numeric.any():
            df[col] = df[col].where(~numeric, cells.str.replace(decimal, ".", regex=False))


PARQUET_ENDS = (".parquet", ".pq")
CSV_ENDS = (".csv", ".csv.gz", ".csv.xz", ".csv.bz2", ".tsv", ".txt")


def read_folder(path: str, series_col: str | None = None, delimiter: str | None = None, decimal: str = ".",
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
    series_col, parts, named = series_col or "series", [], {}
    for f in csvs:
        rel = os.path.relpath(f, path).replace(os.sep, "/")
        sid = rel[:-len(next(e for e in CSV_ENDS if rel.lower().endswith(e)))]
        if sid in named:
            raise DataError(f"{path}: {named[sid]} and {rel} both name series {sid!r}; expected one file per series")
        named[sid] = rel
        df = read_table(f, delimiter, decimal, skip_rows)
        if target is not None and target not in [bare_name(c) for c in map(str, df.columns)]:
            header_below(df, target, f, skip_rows)
            raise DataError(f"{f} has no column {target!r} (its columns: {', '.join(map(str, df.columns))[:200]}); "
                            f"expected one CSV per series in {path}, each with the target: move other files out")
        parts.append(df.assign(**{series_col: sid}))
    return pd.concat(parts, ignore_index=True), series_col


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
    if series_col is None or series_col not in df.columns:
        raise DataError(f"{path}: a Parquet dataset without the series column {series_col or 'node'}; "
                        "name it with --series-col (columns are: " + ", ".join(map(str, df.columns)) + ")")
    return df, series_col


UNIT_HEADER = re.compile(r"^\s*(.*?)\s*\[([^\[\]]*)\]\s*$")


def bare_name(header: str) -> str:
    """A column header without its `[unit]`."""
    m = UNIT_HEADER.match(header)
    return m.group(1) if m and m.group(1) else header


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


def find_time_col(df, time_col):
    """The time column: `time_col`, else one named like a time, else one whose cells parse as dates."""
    import pandas as pd
    if time_col is not None:
        if time_col not in df.columns:
            raise DataError(f"time column '{time_col}' not found; columns are: {', '.join(map(str, df.columns))}")
        return time_col
    for col in df.columns:
        if str(col).lower() in TIME_NAMES:
            return col
    for col in df.columns:
        if df[col].dtype == object or str(df[col].dtype).startswith(("str", "string", "datetime")):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    head = df[col].head(200)
                    parsed = pd.to_datetime(head, errors="coerce", format="mixed", utc=True, dayfirst=dayfirst(head))
            except (ValueError, TypeError, OverflowError):
                continue
            if parsed.notna().mean() > 0.9:
                return col
    return None


_TIME_OF_DAY = r"\s*\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[AaPp]\.?[Mm]\.?)?\s*"     # 13:00, 1:00:05 PM


def join_date_and_time(df, tcol):
    """(df, time column): where the time column holds dates alone and another column times of day
    (`date,time,value`, as many loggers write; or the other way round), one column of both, named as
    the time column. Read apart, the dates repeated on every row of a day, and the times of day
    looked like 24 series' ids (or each took today's date).

    Raises:
        DataError: times of day without any date."""
    if tcol is None or not _is_text(df[tcol]):
        return df, tcol
    is_time = _times_of_day(df[tcol])
    if not is_time and (_dates(df[tcol]).mean() < 0.9 or not _repeats(df[tcol])):   # a full time, or daily rows
        return df, tcol
    for col in df.columns:
        other = df[col]
        if col == tcol or not _is_text(other) or _times_of_day(other) == is_time:
            continue
        if is_time and (_dates(other).mean() < 0.9 or not _repeats(other)):
            continue
        date, time_ = (other, df[tcol]) if is_time else (df[tcol], other)
        joined = date.astype(str).str.strip() + " " + time_.astype(str).str.strip()
        return df.drop(columns=[col]).assign(**{tcol: joined.where(date.notna() & time_.notna())}), tcol
    if is_time:
        example = df[tcol].dropna().astype(str).iloc[0]
        raise DataError(f"time column '{tcol}' holds times of day without a date (such as {example!r}), and no "
                        "other column holds the dates; expected full times, or a date column beside it")
    return df, tcol


def _repeats(dates) -> bool:
    """Whether the dates repeat (several readings a day): a daily file's `sunrise` is no time of its rows."""
    counts = dates.dropna().value_counts()
    return bool(len(counts)) and float(counts.median()) >= 2


def _is_text(col) -> bool:
    return str(col.dtype) in ("object", "str", "string")


def _sample(col, n: int = 20000):
    """At most about n of a column's present cells, spread across it, as text."""
    values = col.dropna()
    return values.iloc[::max(1, len(values) // n)].astype(str)


def _times_of_day(col) -> bool:
    values = _sample(col)
    return bool(len(values)) and values.str.fullmatch(_TIME_OF_DAY).mean() > 0.9


def _dates(col):
    """Whether each cell reads as a date (a time of day alone does not count)."""
    import pandas as pd
    values = col.dropna().astype(str).head(200)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(values, errors="coerce", format="mixed", dayfirst=dayfirst(values))
    except (ValueError, TypeError, OverflowError):          # e.g. naive and aware times mixed: said later
        return pd.Series(False, index=values.index)
    return parsed.notna() & ~values.str.contains(":")


NAT = np.iinfo(np.int64).min          # numpy's NaT as int64
US_ABOVE, NS_ABOVE = MS_ABOVE * 1e3, MS_ABOVE * 1e6     # numeric epochs in µs, ns above these (train/table._epoch_ns)
_OFFSET = r"(?:[+-]\d\d:?\d\d|Z)$"     # an ISO 8601 UTC offset (or Z) at the end of a time string


def time_ns(col, tcol, clock: BundleClock) -> np.ndarray:
    """Every row's time in ns since 1970 on the grid's clock (int64, NAT when unparsable): naive
    times are read on `clock` (DST folds by row order), aware ones converted to it. Mixed kinds
    are refused, naming the first row where the kind changes."""
    import pandas as pd
    serial = _serial_days_ns(col)
    if serial is not None:            # naive wall-clock times, as a spreadsheet writes them
        return _naive_to_grid(serial, clock) if clock.zone is not None else serial
    epochs = _epoch_ns(col)
    if epochs is not None:            # instants, as aware times are
        return epochs if clock.zone is not None else np.where(epochs == NAT, NAT, epochs + round(clock.utc_offset_s * 1e9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        midnight = np.zeros(len(col), bool)
        if pd.api.types.is_datetime64_any_dtype(col):
            t, aware = col, getattr(col.dt, "tz", None) is not None
        else:
            aware = _aware_rows(col, tcol)
            col, midnight = _end_of_day(col)
            t = pd.to_datetime(col, errors="coerce", format="mixed", utc=aware, dayfirst=dayfirst(col))
        if aware:
            t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    ns = t.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    ns = np.where(midnight & (ns != NAT), ns + 86_400 * 10 ** 9, ns)
    if aware:
        return ns if clock.zone is not None else np.where(ns == NAT, NAT, ns + round(clock.utc_offset_s * 1e9))
    return _naive_to_grid(ns, clock) if clock.zone is not None else ns


_NUMERIC_DATE = re.compile(r"^\s*(\d{1,2})([./-])(\d{1,2})\2\d{2,4}\b")      # 31.03.2024, 03/31/2024, 1-2-24


def dayfirst(col) -> bool:
    """Whether a column of numeric dates (`31.03.2024 13:00`, `03/31/2024 1:00 PM`) puts the day
    first: a first field above 12 says so, a second one says month first; where neither does (the
    1st to the 12th of each month only), the order that keeps the rows in time order more often,
    then the one spanning less time (a logger's readings are dense; `01.03`-`10.03` read month first
    span 9 months of one-hour runs), then the separator's custom (a dot: day first). pandas alone
    read `01.03.2024` as 3 January and `13.03.2024` as 13 March, and sorted the series into pieces."""
    import pandas as pd
    text = _sample(col)                                      # a sample across the file: one pass each way
    m = text.str.extract(_NUMERIC_DATE.pattern)
    if len(text) == 0 or m[0].notna().mean() < 0.9:
        return False
    first, second = m[0].dropna().astype(int), m[2].dropna().astype(int)
    if (first > 12).any() != (second > 12).any():
        return bool((first > 12).any())
    score = []
    for day in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = pd.to_datetime(text.head(5000), errors="coerce", format="mixed", dayfirst=day)
        except (ValueError, TypeError, OverflowError):
            return False
        ns = t.dropna().to_numpy(dtype="datetime64[ns]").astype(np.int64)
        score.append((int(np.sum(np.diff(ns) < 0)), int(ns.max() - ns.min()) if len(ns) else 0))
    if score[0] != score[1]:
        return score[0] < score[1]
    return bool((m[1].dropna() == ".").mean() > 0.5)


# Excel's and LibreOffice's serial dates (days since 1899-12-30) of 1950-2100: runtime/times.py's rule.
EXCEL_EPOCH_DAYS = 25569.0          # 1970-01-01 as a serial date


def _serial_days_ns(col) -> np.ndarray | None:
    """A column of numbers wholly within SERIAL_DAYS as the naive wall-clock ns its spreadsheet serial
    dates name (to 0.1 s: six decimals of a day are 0.09 s), or None for any other column."""
    import pandas as pd
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        return None
    v = col.to_numpy(np.float64)
    finite = v[np.isfinite(v)]
    if not len(finite) or finite.min() < SERIAL_DAYS[0] or finite.max() > SERIAL_DAYS[1]:
        return None
    steps = np.diff(np.sort(finite))
    if len(steps) and np.median(steps) > 1.0:         # readings days apart: seconds counted from a start
        return None
    tenths = np.round((np.where(np.isfinite(v), v, 0.0) - EXCEL_EPOCH_DAYS) * 864000.0).astype(np.int64)
    return np.where(np.isfinite(v), tenths * 10 ** 8, NAT)


_END_OF_DAY = r"([T\s])24:00(?::00(?:\.0+)?)?(\s*)$"


def _end_of_day(col):
    """(col, mask): naive times written `2024-03-01 24:00` (loggers that end a day at 24:00) as
    that day's 00:00, and the rows to move a day on; pandas read them as no time, and the report
    counted them as duplicates."""
    text = col.astype(str)
    if not text.str.contains("24:00", regex=False).any():
        return col, np.zeros(len(col), bool)
    mask = (text.str.contains(_END_OF_DAY, regex=True) & col.notna()).to_numpy()
    return col.where(~mask, text.str.replace(_END_OF_DAY, r"\g<1>00:00\g<2>", regex=True)), mask


def _epoch_ns(col) -> np.ndarray | None:
    """A time column of numbers as UTC epoch ns (outside EARLIEST..LATEST: NAT); None for a column
    of other times. runtime/times.py's rule (epoch seconds, milliseconds above MS_ABOVE), and, as a
    database exports them, microseconds above US_ABOVE and nanoseconds above NS_ABOVE (each is
    1e11 s, the year 5138, in the unit below it; the device reads s or ms)."""
    import pandas as pd
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        return None
    v = col.to_numpy(np.float64)
    s = v / np.select([v > NS_ABOVE, v > US_ABOVE, v > MS_ABOVE], [1e9, 1e6, 1e3], 1.0)
    ok = np.isfinite(s) & (s >= EARLIEST) & (s <= LATEST)
    return np.where(ok, np.round(np.where(ok, s, 0.0) * 1e9), NAT).astype(np.int64)


def _aware_rows(col, tcol) -> bool:
    """Whether the time strings carry UTC offsets; DataError when some do and some do not."""
    present = col.notna()
    kinds = col[present].astype(str).str.strip().str.contains(_OFFSET, regex=True).to_numpy()
    if kinds.any() and not kinds.all():
        i = int(np.flatnonzero(kinds != kinds[0])[0])
        row = int(np.flatnonzero(present.to_numpy())[i])
        value = str(col.iloc[row])[:40]
        raise DataError(f"time column '{tcol}' mixes naive and aware times: data row {row + 1} ({value!r}) "
                        f"{'carries' if kinds[i] else 'lacks'} a UTC offset, unlike the rows before it; expected "
                        "every time with an offset (or Z), or every time without one (read on --timezone)")
    return bool(kinds.any())


def _naive_to_grid(wall_ns: np.ndarray, clock: BundleClock) -> np.ndarray:
    """Naive wall-clock ns → UTC epoch ns on a zone's clock, in row order (runtime/times.py's rule:
    a repeated hour's second pass is the later instant, a skipped hour's times shift forward)."""
    out, after = np.full_like(wall_ns, NAT), None
    for i in np.flatnonzero(wall_ns != NAT):
        w = int(wall_ns[i])
        after = clock.local(datetime(1970, 1, 1) + timedelta(microseconds=w // 1000), after)
        out[i] = w - round(w / 1e9 - after) * 10 ** 9          # zone offsets are whole seconds
    return out
