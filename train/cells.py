"""One rule from a table's cell to a number, in training: numeric columns, thousands separators,
units after numbers, loggers' no-reading codes and extreme values (missing, counted in the data
report), and row counters (no input). The device's rule for a reading's cell: runtime/readings.py."""
from __future__ import annotations

import re

import numpy as np

from runtime.readings import GROUPED, SENTINELS

from .table import UNIT_AFTER, DataError


class NotNumeric(DataError):
    """A column asked for (the target, or --features) reads no numbers; `col` names it, `examples` its cells."""

    def __init__(self, text: str, col: str, examples: str):
        super().__init__(text)
        self.col, self.examples = col, examples

# A column is numeric when at least this share of its non-empty cells parse as numbers; the rest
# (a sensor's 'err', 'N/A') are missing cells, counted. Below it the column is text and skipped.
NUMERIC_SHARE = 0.5
# A cell further than this many robust spreads from its column's median is no physical reading
# (an error sentinel such as -9999 or 65535, or float garbage such as 1e30): it is missing,
# counted. The robust spread is the wider of IQR/1.349 and (q99 - q1)/4.65, each a std for
# Gaussian data; for a column flat on 98% of its rows, the median distance of the other rows
# from the median. Rare genuine spikes of a heavy-tailed sensor stay. Matches the
# runtime's REJECT_SIGMAS (runtime/forecaster.py), which applies the same idea on the device.
EXTREME_SPREADS = 1000.0
# Loggers' "no reading" codes (runtime/readings.SENTINELS): one that repeats, lies outside every
# other reading of its column and beyond SENTINEL_SPREADS interquartile spreads of the median is
# missing. At 1% of the rows -9999 had become the 1st percentile that sizes the spread above, and
# -999 on a 20 degC sensor never reached 1000 spreads.
SENTINEL_SPREADS = 20.0


def as_numeric(df, col, report, explicit):
    """The column as float64 with unusable cells as NaN, or None (skipped) when it is not numeric."""
    import pandas as pd
    s = df[col]
    if pd.api.types.is_bool_dtype(s):
        return s.astype(float).to_numpy()
    if pd.api.types.is_numeric_dtype(s):
        if not explicit and not s.notna().any():         # an empty column (a delimiter ending each line)
            report.skipped_columns.append(col)
            return None
        return _drop_extremes(s.to_numpy(dtype=float), col, report)
    decimal = (df.attrs.get("read_as") or (",", "."))[1]
    num = pd.to_numeric(s, errors="coerce")
    present = s.notna() & (s.astype(str).str.strip() != "")
    bad = num.isna() & present
    if decimal == ",":        # beside decimal commas `1.025` is a thousand and 25, not the 1.025 to_numeric read
        bad |= present & s.astype(str).str.contains(".", regex=False)
    if bad.any():
        num = _written_numbers(s, bad, num, col, report, lambda: _point_decimals(df, col, num), decimal)
        bad = num.isna() & present
    if present.any() and (~bad[present]).mean() >= NUMERIC_SHARE:
        if bad.any():
            report.non_numeric_cells[col] = int(bad.sum())
        return _drop_extremes(num.to_numpy(dtype=float), col, report)
    if explicit:
        values = s[bad].unique()[:3]
        examples = ", ".join(repr(v) for v in values)
        comma = any(re.fullmatch(r"\s*[-+]?\d*,\d+\s*", str(v)) for v in values)
        grouped = all(re.fullmatch(_THOUSANDS, str(v).strip()) for v in values)
        raise NotNumeric(f"column '{col}' is not numeric (values such as {examples}); "
                         + ("numbers with decimal commas: pass --decimal ," if comma else
                            "choose numeric columns with --features")
                         + ("; or, if ',' separates thousands here, export the numbers without it (no other "
                            "column shows a decimal point to tell)" if comma and grouped else ""), col, examples)
    report.skipped_columns.append(col)
    return None


# Thousands separators as a US spreadsheet writes them: groups of three digits after each comma
# (runtime/readings.GROUPED). A column whose every unreadable cell is such a number reads them whole
# where that cannot be a decimal comma: two groups or a decimal point ("1,234,567", "1,234.5"), or a
# table whose other numbers show decimal points. "2,004" alone is refused with both readings named
# ("1,512" of a European file is 1.512: read as thousands it was 1000x too large). In a table of
# decimal commas, points in groups of three are thousands ("1.025,7", "1.025"), as the device reads them.
_THOUSANDS = GROUPED[","].pattern
_UNAMBIGUOUS = r"[-+]?\d{1,3}(?:,\d{3}){2,}(?:\.\d+)?|[-+]?\d{1,3}(?:,\d{3})+\.\d+"


def _point_decimals(df, col, num) -> bool:
    """Whether the table's numbers show a decimal point: a non-integer in another numeric column, or
    among this column's readable cells."""
    import pandas as pd
    for c in df.columns:
        v = num if c == col else df[c]
        if pd.api.types.is_float_dtype(v) and (np.abs(v.dropna() % 1) > 0).any():
            return True
    return False


def _sentinels(v: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """The cells holding a logger's "no reading" code (SENTINELS), by the rule there."""
    out = np.zeros(v.shape, bool)
    f = v[finite]
    codes = [c for c in SENTINELS if np.count_nonzero(f == c) >= 2]
    if not codes:
        return out
    rest = f[~np.isin(f, codes)]
    if len(rest) < 2:
        return out
    q = np.percentile(rest, [25, 50, 75])
    spread = max((q[2] - q[0]) / 1.349, 1e-12)
    for c in codes:
        if not rest.min() <= c <= rest.max() and abs(c - q[1]) > SENTINEL_SPREADS * spread:
            out |= finite & (v == c)
    return out


_WITH_UNIT = rf"\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*({UNIT_AFTER})\s*"     # 21.3 C, 5 %


def _written_numbers(s, bad, num, col: str, report, point_decimals, decimal: str = "."):
    """`num` with the cells that did not read as numbers but are, as spreadsheets and loggers write
    them: thousands separators ("2,004": see _THOUSANDS; `point_decimals()` tells; "1.025,7" in a
    table of `decimal` commas) or one unit after every number ("21.3 C", counted and kept as the
    column's unit), where every such cell of the column is written that way."""
    import pandas as pd
    text = s[bad].astype(str).str.strip().str.replace("\u2212", "-", regex=False)     # a typeset minus
    if decimal == ",":
        text = _comma_decimals(text, col, report)
    fixed = pd.to_numeric(text, errors="coerce")
    num[bad] = fixed
    text = text[fixed.isna()]
    bad = s.index.isin(text.index)
    if decimal == "." and text.str.fullmatch(_THOUSANDS).all() and (
            text.str.fullmatch(_UNAMBIGUOUS).any() or point_decimals()):
        num[bad] = pd.to_numeric(text.str.replace(",", "", regex=False))
        report.thousands[col] = int(bad.sum())
        return num
    parts = text.str.extract(f"^{_WITH_UNIT}$")
    if parts[0].notna().all() and parts[1].nunique() == 1:
        num[bad] = pd.to_numeric(parts[0])
        report.cell_units[col] = (parts[1].iloc[0], int(bad.sum()))
    return num


def _comma_decimals(text, col: str, report):
    """Cells of a table of decimal commas written with points: thousands in groups of three
    ("1.025,7", "1.025 kWh": counted) lose them; then a lone comma is the decimal point ("21,5 °C").
    The number before a unit is read alone, as the device reads it (runtime/readings.cell_number)."""
    parts = text.str.extract(r"^(\S*?)(\s*[^\d.,\s+-].*)?$")
    number, unit = parts[0].fillna(text), parts[1].fillna("")
    grouped = number.str.fullmatch(GROUPED["."].pattern)
    if grouped.any():
        report.thousands[col] = int(grouped.sum())
        number = number.where(~grouped, number.str.replace(".", "", regex=False))
    single = ~number.str.contains(".", regex=False) & (number.str.count(",") == 1)
    return number.where(~single, number.str.replace(",", ".", regex=False)) + unit


def is_counter(v: np.ndarray) -> bool:
    """Whether a column only counts the rows (a logger's RECORD number): up by one on nearly every row.
    As an input it is a value the model has never seen on every reading after training."""
    f = v[np.isfinite(v)]
    return len(f) > 10 and bool(np.all(f == np.round(f))) and np.mean(np.diff(f) == 1) > 0.99


def _drop_extremes(v: np.ndarray, col: str, report) -> np.ndarray:
    """Non-finite cells, loggers' "no reading" codes (_sentinels) and cells beyond EXTREME_SPREADS
    robust spreads of the median become NaN."""
    finite = np.isfinite(v)
    bad = ~finite & ~np.isnan(v)
    coded = _sentinels(v, finite)
    bad |= coded
    finite &= ~coded
    if finite.any():
        f = v[finite]
        q = np.percentile(f, [1, 25, 50, 75, 99])
        spread = max((q[3] - q[1]) / 1.349, (q[4] - q[0]) / 4.65)
        if spread == 0 and (f != q[2]).any():     # flat on 98% of rows: the typical size of the rest
            spread = float(np.median(np.abs(f[f != q[2]] - q[2])))
        if spread > 0:
            bad |= finite & (np.abs(v - q[2]) > EXTREME_SPREADS * spread)
    if bad.any():
        report.extreme_cells[col] = (int(bad.sum()), float(v[bad][0]))
        v = np.where(bad, np.nan, v)
    return v
