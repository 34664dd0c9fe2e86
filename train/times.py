"""A training table's time column → every row's time, by runtime/times.py's rule, for a whole column
at once: naive times on the data's clock (`--timezone`, or the fixed `--utc-offset-hours`), aware
ones converted to it; epoch numbers (s, ms, and µs and ns as databases export them), spreadsheet
serial days, day-first dates, a day's `24:00`, and a date column beside a time-of-day column, as
loggers write them; naive and aware times mixed in one column are refused, naming the row.
"""
from __future__ import annotations

import re
import warnings
from datetime import datetime, timedelta

import numpy as np

from runtime.times import EARLIEST, LATEST, MS_ABOVE, NS_ABOVE, SERIAL_DAYS, SERIAL_ORIGIN, US_ABOVE, BundleClock

from .table import DataError, is_text

TIME_NAMES = ("time", "timestamp", "date", "datetime", "ts")


def find_time_col(df, time_col):
    """The time column: `time_col`, else one named like a time, else one whose cells parse as dates."""
    import pandas as pd
    if time_col is not None:
        if time_col not in df.columns:
            raise DataError(f"time column '{time_col}' not found; columns are: {', '.join(map(str, df.columns))}")
        return time_col
    for col in df.columns:
        if str(col).lower().lstrip("_") in TIME_NAMES:          # (InfluxDB's `_time`)
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
            if parsed.notna().mean() > 0.9 and (len(head) < 2 or parsed.nunique() > 1):   # (not a query's _start)
                return col
    return None


_TIME_OF_DAY = r"\s*\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[AaPp]\.?[Mm]\.?)?\s*"     # 13:00, 1:00:05 PM


def join_date_and_time(df, tcol):
    """(df, time column, the file's column(s) it was read from): where the time column holds dates
    alone and another column times of day (`date,time,value`, as many loggers write; or the other way
    round), one column of both, named as the time column, read from [date, time]. Read apart, the
    dates repeated on every row of a day, and the times of day looked like 24 series' ids (or each
    took today's date). The device joins the same columns (runtime/readings.time_columns).

    Raises:
        DataError: times of day without any date."""
    if tcol is None or not is_text(df[tcol]):
        return df, tcol, [tcol] if tcol is not None else []
    is_time = _times_of_day(df[tcol])
    if not is_time and (_dates(df[tcol]).mean() < 0.9 or not _repeats(df[tcol])):   # a full time, or daily rows
        return df, tcol, [tcol]
    for col in df.columns:
        other = df[col]
        if col == tcol or not is_text(other) or _times_of_day(other) == is_time:
            continue
        if is_time and (_dates(other).mean() < 0.9 or not _repeats(other)):
            continue
        date, time_ = (other, df[tcol]) if is_time else (df[tcol], other)
        joined = date.astype(str).str.strip() + " " + time_.astype(str).str.strip()
        source = [col, tcol] if is_time else [tcol, col]
        return df.drop(columns=[col]).assign(**{tcol: joined.where(date.notna() & time_.notna())}), tcol, source
    hour = None if is_time else next((c for c in df.columns if c != tcol and _hour_numbers(c, df[c])), None)
    if hour is not None:                 # date,hour,value: 13 is 13:00, an hour-ending 24 the next day's 00:00
        h = df[hour]
        joined = df[tcol].astype(str).str.strip() + " " + h.map(lambda v: f"{int(v):02d}:00" if v == v else "")
        return df.drop(columns=[hour]).assign(**{tcol: joined.where(df[tcol].notna() & h.notna())}), tcol, [tcol, hour]
    if is_time:
        example = df[tcol].dropna().astype(str).iloc[0]
        raise DataError(f"time column '{tcol}' holds times of day without a date (such as {example!r}), and no "
                        "other column holds the dates; expected full times, or a date column beside it")
    return df, tcol, [tcol]


_HOUR_NAME = r"hour|hr|hh|h|he|hour[ _]?ending|stunde|heure|hora"


def _hour_numbers(name, col) -> bool:
    """Whether a column is the hour of its row's date: named so, whole numbers 0-23 or 1-24."""
    import pandas as pd
    if not re.fullmatch(_HOUR_NAME, str(name).strip(), re.IGNORECASE) or not pd.api.types.is_numeric_dtype(col):
        return False
    v = col.dropna().to_numpy(np.float64)
    return len(v) > 0 and bool(np.all(v == np.round(v))) and v.min() >= 0 and v.max() <= 24 and not (v.min() == 0 and v.max() == 24)


def _repeats(dates) -> bool:
    """Whether the dates repeat (several readings a day): a daily file's `sunrise` is no time of its rows."""
    counts = dates.dropna().value_counts()
    return bool(len(counts)) and float(counts.median()) >= 2


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
# a UTC offset (or Z, UTC, GMT) at the end of a time string; an hour alone (psql's `+02`) after a time of day
_OFFSET = r"(?:[+-]\d\d:?\d\d|:\d\d(?:[.,]\d+)?[+-]\d\d|Z|\s(?:UTC|GMT))$"


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


_NUMERIC_DATE = (r"^\s*(?:\d{1,2}(?::\d\d)+(?:[.,]\d+)?\s*(?:[AaPp]\.?[Mm]\.?)?,?\s+)?"     # (13:00 31.03.2024: a time first)
                 r"(\d{1,2})([./-])(\d{1,2})\2\d{2,4}\b")                    # 31.03.2024, 03/31/2024, 1-2-24


def day_order(col) -> bool | None:
    """For the bundle (`derived_inputs.dayfirst`): whether a column of numeric dates puts the day
    first (dayfirst); None for a column of other times (ISO 8601, numbers), where it means nothing."""
    if not is_text(col):
        return None
    text = _sample(col)
    return dayfirst(col) if len(text) and text.str.match(_NUMERIC_DATE).mean() >= 0.9 else None


def dayfirst(col) -> bool:
    """Whether a column of numeric dates (`31.03.2024 13:00`, `03/31/2024 1:00 PM`) puts the day
    first: a first field above 12 says so, a second one says month first; where neither does (the
    1st to the 12th of each month only), the order that keeps the rows in time order more often,
    then the one spanning less time (a logger's readings are dense; `01.03`-`10.03` read month first
    span 9 months of one-hour runs), then the separator's custom (a dot: day first). pandas alone
    read `01.03.2024` as 3 January and `13.03.2024` as 13 March, and sorted the series into pieces."""
    import pandas as pd
    text = _sample(col)                                      # a sample across the file: one pass each way
    m = text.str.extract(_NUMERIC_DATE)
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


# Excel's and LibreOffice's serial dates of 1950-2100: runtime/times.py's rule (SERIAL_DAYS, SERIAL_ORIGIN).
EPOCH_SERIAL_DAYS = (datetime(1970, 1, 1) - SERIAL_ORIGIN).days          # 1970-01-01 as a serial date


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
    tenths = np.round((np.where(np.isfinite(v), v, 0.0) - EPOCH_SERIAL_DAYS) * 864000.0).astype(np.int64)
    return np.where(np.isfinite(v), tenths * 10 ** 8, NAT)


_END_OF_DAY = r"([T\s])24:00(?::00(?:\.0+)?)?(\s*)$"     # ISO 8601's end of a day (the device: runtime/times._logger_time)


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
    1e11 s, the year 5138, in the unit below it; the device reads them alike)."""
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
