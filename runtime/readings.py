"""The reading's edge: every way a reading enters (a CSV line, an MQTT payload, a serial line) and
every text a forecast leaves in, checked in one place.

- one list of time-column names (`TIME_COLUMNS`), for CSV headers and JSON keys alike;
- one rule from a CSV cell to a number (`cell_number`) and one from a JSON value (`json_number`);
- bounded decoding: a payload's size (`MAX_PAYLOAD_BYTES`), a line's size (`MAX_LINE_BYTES`),
  JSON nesting depth (`MAX_DEPTH`), finite float64 values, no control characters in a line;
- the forecast column names (`forecast_columns`: T1+10min, T1+10min_lo80, ...);
- the append-only forecast CSV with its header check (`open_append`), one spelling of a missing
  value (an empty cell) and spreadsheet-formula escaping of text cells (`text_cell`);
- a name from outside as Markdown text that renders as itself (`md_text`: reports, tables).

Times are read by one rule too, the bundle's clock (runtime/times.py): epoch s or ms, aware
ISO 8601, naive times on the bundle's clock; a plausible instant only.

Nothing here raises anything but `Malformed` (a reading that is no reading: the service counts
it and goes on) or, for files given on the command line, `ValueError` with one line.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import sys

import numpy as np

MAX_PAYLOAD_BYTES = 64 * 1024      # no sensor reading is larger; a 1 MB message is refused unparsed
MAX_LINE_BYTES = 128 * 1024        # a longer input line is no sensor reading: skipped and counted
MAX_DEPTH = 16                     # JSON nesting: a reading is an object of numbers, maybe one level more
MAX_TIME_CHARS = 64                # an ISO 8601 time with a zone name fits easily
MAX_ABOVE_HEADER = 10              # lines a logger writes above its header (its name, serial, units)
TIME_COLUMNS = ("time", "timestamp", "date", "datetime", "date_time", "ts", "ds")
_NAN = float("nan")
FLOAT32_MAX = float(np.finfo(np.float32).max)      # a larger value is no reading: it cannot reach an engine
# Loggers' "no reading" codes. Outside a sensor's usual range (training: beyond its other readings and
# 20 interquartile spreads, train/cells._sentinels; the device: beyond RANGE_SIGMAS) such a value is missing.
SENTINELS = (-99999.0, -9999.0, -9999.9, -999.0, -999.9, 999.9, 9999.0, 99999.0, 65535.0, -32768.0, 32767.0)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")        # a tab is a delimiter, everything else is not text
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


class Malformed(ValueError):
    """A message or line that is no reading; the text says what was wrong and what was expected."""


class NotText(Malformed):
    """A line that is not UTF-8: a file in another encoding, or binary (stream stops there)."""


def is_time_column(name: str) -> bool:
    return name.strip().lower() in TIME_COLUMNS


def time_columns(header: list, trained=None) -> tuple:
    """Indices of a CSV header's time column(s), their cells joined with a space to read a time: the
    columns the bundle was trained on (`derived_inputs.time_columns`: a logger's `Datum`, or a date
    column and a time-of-day column; `Unnamed: 0`, pandas' name for an empty header cell, is that
    cell) where the header has them all; else the first named like a time, with a `time` column after
    a `date` one (`date,time,value`); () for none."""
    found = [_column_of(header, c) for c in trained or ()]
    if found and None not in found:
        return tuple(found)
    found = [i for i, h in enumerate(header) if is_time_column(h)]
    names = [header[i].strip().lower() for i in found[:2]]
    return tuple(found[:2]) if names == ["date", "time"] else tuple(found[:1])


def _column_of(header: list, name: str):
    if name in header:
        return header.index(name)
    m = re.fullmatch(r"Unnamed: (\d+)", name)
    return int(m[1]) if m and int(m[1]) < len(header) and not header[int(m[1])].strip() else None


UNIT_HEADER = re.compile(r"^\s*(.*?)\s*\[([^\[\]]*)\]\s*$")     # `T1 [°C]`, `RH[%]`: a name and its unit
MAX_UNIT = 64             # a unit reaches the bundle, MQTT, Home Assistant and C: a short printable name
UNIT_RULE = f"1-{MAX_UNIT} printable characters"


def unit_ok(unit) -> bool:
    """A column's unit as train, collect and a series' units write it: text of 1 to MAX_UNIT printable
    characters (no control, line-breaking or bidirectional-override characters). A feature's own
    unit in a bundle is not held to it when read (bundles made before could carry any): whatever
    reaches C, Markdown or MQTT is escaped there."""
    return isinstance(unit, str) and 0 < len(unit) <= MAX_UNIT and unit.isprintable()


def bare_name(header: str) -> str:
    """A column header without its `[unit]`."""
    m = UNIT_HEADER.match(header)
    return m.group(1) if m and m.group(1) else header


def time_text(row: list, cols: tuple) -> str:
    """A row's time as text from its time column(s) (time_columns), '' where it has none; a date's
    hour written as a number (`date,hour`: 13) is that hour's start (13:00; 24: the day's end)."""
    cells = [row[i].strip() if i < len(row) else "" for i in cols]
    if len(cells) < 2 or ":" in cells[0]:       # one column, or `date` a full time already (a bundle before time_columns)
        return cells[0] if cells else ""
    if not all(cells):                          # a row without its date or its time: none (training drops it)
        return ""
    if cells[1].isascii() and cells[1].isdigit() and len(cells[1]) <= 2:
        cells[1] = f"{int(cells[1]):02d}:00"
    return " ".join(cells)


# -- JSON ---------------------------------------------------------------------------------------
def _no_constant(name: str):
    raise Malformed(f"JSON constant {name} is no reading; expected a finite number or null")


def _depth(raw: bytes) -> int:
    """The deepest nesting of [ and { outside strings, without recursing."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0                   # cannot be deeper than the brackets it has (the usual case, no scan)
    b = np.frombuffer(_STRINGS.sub(b"", raw), np.uint8)
    step = ((b == 91) | (b == 123)).astype(np.int32) - ((b == 93) | (b == 125))      # [{ and ]}
    return int(np.cumsum(step).max(initial=0))


def loads(raw: bytes):
    """A payload as JSON, bounded: size, nesting depth, numbers as float64 (no giant integers).

    Raises:
        Malformed: too large, too deep, not UTF-8 JSON, or a NaN/Infinity constant.
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise Malformed(f"payload of {len(raw)} bytes, over {MAX_PAYLOAD_BYTES}")
    depth = _depth(raw)
    if depth > MAX_DEPTH:
        raise Malformed(f"payload nested {depth} deep, over {MAX_DEPTH}; expected an object of feature values")
    try:
        return json.loads(raw, parse_int=float, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, Malformed):
            raise
        raise Malformed(f"payload {raw[:40]!r} is not JSON") from None


def json_number(key: str, v) -> float:
    """A JSON value as a reading's value: a finite number, true or false (1 and 0: a contact, as
    training reads TRUE and FALSE), or null (missing, NaN)."""
    if v is None:
        return _NAN
    if not isinstance(v, (int, float)):
        raise Malformed(f"field {str(key)[:40]!r} is {type(v).__name__} {str(v)[:30]!r}; expected a number or null")
    v = float(v)
    if not -FLOAT32_MAX <= v <= FLOAT32_MAX:
        raise Malformed(f"field {str(key)[:40]!r} is {v:g}; expected a number within float32's range, or null")
    return v


def time_value(v):
    """A JSON or CSV time, bounded before it is parsed: a number or a short string."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise Malformed(f"time {str(v)[:40]!r} is a {type(v).__name__}; expected ISO 8601 text or epoch seconds")
    if isinstance(v, str) and len(v) > MAX_TIME_CHARS:
        raise Malformed(f"time {v[:40]!r}... is {len(v)} characters; expected ISO 8601 text or epoch seconds")
    return v


# -- lines --------------------------------------------------------------------------------------
def line_text(raw: bytes) -> str:
    """One input line as text without its line end; a BOM is dropped. (Messages name no source:
    the caller knows the file and line.)

    Raises:
        Malformed: over MAX_LINE_BYTES, not UTF-8, or a control character inside (a bare CR, NUL, ...).
    """
    if len(raw) > MAX_LINE_BYTES:
        raise Malformed(f"{len(raw)} bytes, over {MAX_LINE_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = ("; it starts as UTF-16 text does (Excel's 'Unicode text'): save it as 'CSV UTF-8'"
                if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "")
        raise NotText(f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}){hint}") from None
    text = text.lstrip("\ufeff")
    text = text[:-1] if text.endswith("\n") else text
    text = text[:-1] if text.endswith("\r") else text
    bad = _CONTROL.search(text)
    if bad:
        raise Malformed(f"control character {bad.group()!r} at column {bad.start() + 1}; "
                        "expected one line of text")
    return text


def split_line(text: str, delimiter: str = ",") -> list:
    """The cells of one checked line (csv quoting rules; spaces after a delimiter dropped, as training
    reads `time, node, value`: pandas' skipinitialspace)."""
    try:
        return next(csv.reader([text], delimiter=delimiter, skipinitialspace=True), [])
    except csv.Error as e:
        raise Malformed(f"not a CSV line ({e})") from None


# Thousands separators as spreadsheets write them, by the thousands mark: groups of three digits
# (`1,025.7` beside decimal points; `1.025,7` or `1.025` beside decimal commas). Training reads them
# by the same patterns (train/cells.py).
GROUPED = {",": re.compile(r"[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?"),      # (0.125 is no thousand)
           ".": re.compile(r"[-+]?[1-9]\d{0,2}(?:\.\d{3})+(?:,\d+)?")}


def cell_number(cell: str, decimal: str = ".", unit: str | tuple = "", thousands: str = ",") -> float:
    """A CSV cell as a reading's value: empty, unparsable (a sensor's 'err', 'N/A'), non-finite or
    beyond float32 (no physical reading; the engines' buffers are float32) is missing (NaN), which
    the forecaster's nan_policy then holds, fills or refuses, and counts. As training reads them: a
    `decimal` comma (`21,5`), `thousands` separators (GROUPED: `1,025.7`; `1.025` is 1025 where
    thousands is `.`), the column's `unit` after the number (`21.5 °C`; a tuple: any of them, longest
    first), a typeset minus (`−2.5`), TRUE and FALSE as 1 and 0."""
    try:
        if thousands == "." and "." in cell:
            raise ValueError
        v = float(cell)
    except ValueError:
        v = _written_number(cell, decimal, unit, thousands)
    return v if -FLOAT32_MAX <= v <= FLOAT32_MAX else _NAN


def _written_number(cell: str, decimal: str, unit: str, thousands: str) -> float:
    text = cell.strip().replace("\u2212", "-")               # a typeset minus
    if text.lower() in ("true", "false"):                     # a contact's state: training reads 1 and 0
        return 1.0 if text.lower() == "true" else 0.0
    for u in (unit,) if isinstance(unit, str) else unit:
        if u and text.endswith(u):
            text = text[:-len(u)].rstrip()
            break
    if thousands in GROUPED and thousands != decimal and GROUPED[thousands].fullmatch(text):
        text = text.replace(thousands, "")
    if decimal != "." and "." not in text and text.count(decimal) == 1:
        text = text.replace(decimal, ".")
    try:
        return float(text)
    except ValueError:
        return _NAN


def feature_units(manifest: dict) -> list:
    """Per feature, the units its cells may be written in, longest first: its own (`features[].unit`),
    and those the series of a many-series bundle write in it where they differ (`series.<id>.units`)."""
    own = [s.get("units") or {} for s in (manifest.get("series") or {}).values()]
    return [tuple(sorted({u for u in [f.get("unit") or ""] + [units.get(f["name"]) or "" for units in own] if u},
                         key=len, reverse=True)) for f in manifest["features"]]


HEADER_DELIMITERS = (",", ";", "\t", "|")     # a CSV's delimiter when no one says: the first that finds every feature


def trained_csv(manifest: dict) -> tuple:
    """(delimiter, decimal mark) training read its file with (the manifest's `source.data_spec`),
    else `,` and `.`; a value that could be no delimiter or decimal mark is not taken."""
    spec = (manifest.get("source") or {}).get("data_spec") or {}
    d = spec.get("delimiter")
    ok = isinstance(d, str) and len(d) == 1 and not d.isalnum() and d not in "\"\r\n."
    return (d if ok else ","), (spec["decimal"] if spec.get("decimal") in (".", ",") else ".")


class CsvCells:
    """How one CSV file's cells become a reading's values: the delimiter and decimal mark (given,
    else those training read its file with, the bundle's `source.data_spec`, else `,` and `.`), each
    feature's column and unit (`features[].unit`), and the feature columns that have read no number
    yet: after SAY_AFTER lines, each is said once (`said`), with a cell and what it looks like."""
    SAY_AFTER = 20

    def __init__(self, manifest: dict, delimiter: str | None = None, decimal: str | None = None):
        self.trained, self.given = trained_csv(manifest), (delimiter, decimal)
        self.delimiter, self.decimal = delimiter or self.trained[0], decimal or self.trained[1]
        self.features = [f["name"] for f in manifest["features"]]
        self.units = feature_units(manifest)
        self.cols, self.lines = [], 0
        self.thousands = "," if self.decimal == "." else ""        # (header() sets it as it sets the decimal mark)
        self.unread = {}                 # feature -> a cell that read no number, while none has

    def header(self, text: str, name: str) -> list:
        """A header line's column names (parse_header), split by the first delimiter that finds every
        feature: the given one, else training's, `,`, `;`, tab, `|`. Its lines are split alike, and
        their decimal mark is the given one, else training's with training's delimiter, else a comma
        in a file not delimited by commas. Raises ValueError with what the first delimiter lacked."""
        first = None
        for d in (self.given[0],) if self.given[0] else dict.fromkeys((self.trained[0],) + HEADER_DELIMITERS):
            try:
                header = parse_header(text, self.features, d, name)
            except ValueError as e:
                first = first or e
                continue
            self.delimiter = d
            if not self.given[1]:
                self.decimal = self.trained[1] if d == self.trained[0] else "." if d == "," else ","
            # `1.025` is a thousand only where the decimal comma is known (given or trained), not guessed
            known = self.given[1] == "," or (not self.given[1] and d == self.trained[0] and self.trained[1] == ",")
            self.thousands = "," if self.decimal == "." else "." if known else ""
            self.cols, self.unread = [header.index(f) for f in self.features], {}
            return header
        raise first

    def values(self, row: list) -> list:
        out = [cell_number(row[i], self.decimal, u, self.thousands) if i < len(row) else _NAN
               for i, u in zip(self.cols, self.units)]
        self.lines += 1
        if self.lines <= self.SAY_AFTER:
            for f, i, v in zip(self.features, self.cols, out):
                if v == v:
                    self.unread[f] = None
                elif i < len(row) and row[i].strip() and f not in self.unread:
                    self.unread[f] = row[i].strip()[:40]
        return out

    def said(self) -> list:
        """Once, after SAY_AFTER lines: a line for each feature column that read no number in them."""
        if self.lines != self.SAY_AFTER:
            return []
        out = []
        for f, cell in self.unread.items():
            if cell is None:
                continue
            hint = ("decimal commas? pass --decimal ," if re.fullmatch(r"[-+]?\d*,\d+", cell) and self.decimal != ","
                    else "expected numbers (a unit after them only as the bundle names it: "
                         f"{' or '.join(self.units[self.features.index(f)]) or 'none'})")
            out.append(f"column {f!r} reads no number in the first {self.SAY_AFTER} lines (such as {cell!r}): "
                       f"every reading of it is missing; {hint}")
        return out


def parse_header(text: str, features: list, delimiter: str, name: str) -> list:
    """Column names of a header line, checked: every feature present once, the delimiter plausible.

    Raises:
        ValueError: one line naming what is missing or doubled, with a delimiter hint.
    """
    header = [h.strip() for h in split_line(text.rstrip("\r\n"), delimiter)]
    header = [bare_name(h) if h not in features and bare_name(h) in features else h for h in header]   # T1 [°C]
    if len(header) == 1 and len(features) > 1:
        seen = max(";\t|, ", key=header[0].count)
        hint = f" The header looks like one column; it contains {seen!r}: pass --delimiter {seen!r}." \
            if header[0].count(seen) else ""
        raise ValueError(f"{name}: the header {header[0][:80]!r} is one column with delimiter {delimiter!r}; "
                         f"expected the features {', '.join(features)}.{hint}")
    dup = sorted({h for h in header if header.count(h) > 1 and h in features})
    if dup:
        raise ValueError(f"{name}: feature column(s) {', '.join(dup)} appear more than once in the header")
    missing = [f for f in features if f not in header]
    if missing:
        raise ValueError(f"{name}: the header lacks feature column(s) {', '.join(missing)}; expected (any order, "
                         f"extra columns pass through): {', '.join(features)}")
    return header


def is_header(cells: list, known: set) -> bool:
    """A line every cell of which is a known column name (a header re-sent mid-stream)."""
    names = [c.strip() for c in cells]
    return bool(names) and all(n in known or is_time_column(n) for n in names)


# -- out ----------------------------------------------------------------------------------------
def step_label(k: int, period_s) -> str:
    """How far ahead step k is: '+10min' for k=1 of a 600 s period, '+16ms', '+2h'; '+k' without a period."""
    if not period_s:
        return f"+{k}"
    t = k * period_s
    for unit, sec in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if t >= sec and abs(t / sec - round(t / sec)) < 1e-6:
            return f"+{round(t / sec)}{unit}"
    return f"+{1e3 * t:.6g}ms" if t < 1 else f"+{t:.6g}s"


def forecast_columns(fc, intervals: bool, labels: bool = True) -> list:
    """target+10min.. (the time ahead each step applies; target+1..K with labels=False, the
    header before version 0.2), then target+10min_lo80 / _hi80 per level when intervals are on."""
    target, horizon = fc.manifest["targets"][0]["name"], fc.manifest["model"]["horizon"]
    period = fc.manifest.get("sample_period_s") if labels else None
    names = [f"{target}{step_label(k + 1, period)}" for k in range(horizon)]
    cols = list(names)
    if intervals:
        for lv in fc.manifest["intervals"]["levels"]:
            tag = f"{100 * lv:g}"
            cols += [f"{n}_{side}{tag}" for side in ("lo", "hi") for n in names]
    return cols


def value_cell(v) -> str:
    """A forecast value in a CSV: 6 significant digits; missing (NaN) is an empty cell."""
    return f"{v:.6g}" if math.isfinite(v) else ""


def text_cell(text: str) -> str:
    """A text cell a spreadsheet will not run: one that begins like a formula gets a leading
    quote, unless it is a number (a negative reading stays a number)."""
    if text[:1] in _FORMULA:
        try:
            float(text)
            return text
        except ValueError:
            return "'" + text
    return text


# Characters Markdown (CommonMark, GitHub tables, math) or HTML give a meaning inside a line.
MARKDOWN_SIGNS = frozenset("\\`*_[]<>|~&$")


def md_text(text) -> str:
    """`text` as Markdown that renders as exactly this text, on one line, inside a paragraph or a
    table cell: non-printable characters (newline, escape, a bidi override) shown as Python escapes
    (\\n, \\x1b, \\u202e), a backslash as \\\\, and every Markdown or HTML sign backslash-escaped
    (but an underscore inside a word, which CommonMark never reads as emphasis: ankle_vert stays)."""
    text = str(text)
    out = []
    for i, ch in enumerate(text):
        if ch == "_" and text[i - 1:i].isalnum() and text[i + 1:i + 2].isalnum():
            out.append(ch)
            continue
        shown = "\\\\" if ch == "\\" else ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        out.append("".join("\\" + c if c in MARKDOWN_SIGNS else c for c in shown))
    return "".join(out)


def _cut_partial_row(path: str) -> None:
    """A file that ends inside a row (a full disk, a kill while writing) is cut back to its last whole
    line, and said: the next row appended to it would have been glued onto that part of one."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - MAX_LINE_BYTES, 0))
        tail = f.read()
        if tail.endswith(b"\n") or b"\n" not in tail:
            return
        keep = size - len(tail) + tail.rfind(b"\n") + 1
        f.truncate(keep)
    print(f"note: {path} ended inside a row (a full disk, or a kill while writing?): its last {size - keep} "
          "byte(s) were cut before appending", file=sys.stderr)


def open_append(path: str, header: list, legacy: list | None = None):
    """(file, fresh): a CSV opened for appending, refused when it exists with another header
    (or the `legacy` one, the same columns under earlier names); a fresh file gets the header."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            first = next(csv.reader(f), [])
        if first != header and first != legacy:
            raise ValueError(f"{path} exists with another header ({','.join(first)[:120]}); expected "
                             f"{','.join(header)[:120]}: refusing to mix two outputs in one file (move it aside)")
        _cut_partial_row(path)
        return open(path, "a", newline="", encoding="utf-8"), False
    f = open(path, "a", newline="", encoding="utf-8")
    csv.writer(f).writerow(header)
    f.flush()
    return f, True
