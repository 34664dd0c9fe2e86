"""One rule for a reading's time: epoch seconds or milliseconds, aware or naive ISO 8601, on the bundle's clock.

Every way a time enters (a CSV cell, an MQTT payload, a serial line, `Forecaster.step(time=t)`)
becomes epoch seconds (UTC) through `BundleClock.epoch`; calendar inputs are computed on the
bundle's wall clock through `BundleClock.wall`. Training reads its CSV's times the same way
(train/times.py), so the device computes what training computed.

    >>> clock = BundleClock.from_manifest({"derived_inputs": {"timezone": "Europe/Paris", "inputs": []}})
    >>> clock.epoch("2026-01-31T12:00:00")               # naive: on the bundle's clock (CET, +01:00)
    1769857200.0
    >>> clock.epoch(1769857200000) == clock.epoch("2026-01-31T11:00:00Z")     # milliseconds; aware
    True
    >>> clock.wall(1769857200.0) % 86400 / 3600          # 12:00 on the wall clock
    12.0

The rule:
- A number (int, float, numpy number, or a numeric string such as a CSV cell, its decimal mark a
  point or a comma) is epoch seconds, or epoch milliseconds when it is above 1e11 (1e11 s is the
  year 5138; 1e11 ms is 1973), microseconds above 1e14 and nanoseconds above 1e17 (likewise).
  A negative number is always seconds. One within SERIAL_DAYS (18264-73051) is a spreadsheet's
  serial date (days since 1899-12-30, a naive wall-clock time, to 0.1 s): as epoch seconds it
  would fall on 1970-01-01 between 05:04 and 20:17, where no logger's clock is.
- An aware time (ISO 8601 with an offset, a trailing Z, UTC or GMT, or an aware datetime) is that instant.
- A logger's or spreadsheet's date-time (`31.03.2024 13:00`, `3/31/2024 1 PM`, `2024/03/31
  13:00:05`, `31-Mar-2024 13:00`, `Mar 31, 2024 1:00 PM`, `Sun, 31 Mar 2024 13:00:00 +0000`, a
  two-digit year as dateutil reads it, a day's `24:00`) is a naive time, or aware with an offset. Where
  both numbers before the year could be the month, the bundle's `dayfirst` (what training found
  in its time column) says which; a bundle without it refuses such a time (it cannot know).
- A naive time (ISO 8601 without an offset, a naive datetime, numpy datetime64) is a wall-clock
  time on the bundle's clock: its IANA time zone (bundle format 5, `derived_inputs.timezone`),
  or the fixed `derived_inputs.utc_offset_s` of older bundles (0 when a bundle has neither).
  - In a fall-back fold (the repeated hour), the earlier instant (fold=0), unless `after`, the
    previous epoch from the same source, is already at or past it: then the later one (fold=1).
    So naive readings sent in order stay in order across the repeated hour.
  - In a spring-forward gap (a time that never existed on that clock), the time is shifted
    forward by the gap: 02:30 in Paris on 2026-03-29 is read as 03:30 CEST (zoneinfo's fold=0).
- The instant must be plausible: from EARLIEST (1900-01-01 00:00 UTC) to LATEST
  (2200-01-01 00:00 UTC). Anything else, non-finite numbers and integers of any size included,
  raises `TimeError` with one line naming the value and what is expected; never an
  OverflowError.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EARLIEST = -2208988800.0        # 1900-01-01T00:00:00Z, epoch seconds
LATEST = 7258118400.0           # 2200-01-01T00:00:00Z, epoch seconds
MS_ABOVE = 1e11                 # a number above this is epoch milliseconds,
US_ABOVE, NS_ABOVE = MS_ABOVE * 1e3, MS_ABOVE * 1e6     # microseconds, nanoseconds (as databases export them)
SERIAL_DAYS = (18264.0, 73051.0)        # spreadsheet serial dates of 1950-2100 (days since SERIAL_ORIGIN)
SERIAL_ORIGIN = datetime(1899, 12, 30)
MAX_TEXT = 64                   # no time written as text is longer
SPAN = "1900-01-01 .. 2200-01-01 UTC"
TIME_HELP = ("epoch seconds (or milliseconds), an ISO 8601 date-time (2026-01-31T12:00:00, with an offset "
             "or Z for UTC; naive means the bundle's clock) or a datetime")
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INT_BOUND = 10 ** 20            # beyond any plausible epoch in seconds to nanoseconds


class TimeError(ValueError):
    """A reading's time is missing where the bundle needs one, or is not a plausible time."""


def _show(value) -> str:
    """The value for an error line, at most ~40 characters (never fails, whatever its size)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 30:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. Europe/Paris, UTC).

    Raises:
        ValueError: the name is not a zone of this machine's tz database.
    """
    try:
        if not isinstance(name, str) or not name.strip():
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        raise ValueError(f"time zone {_show(name)} is unknown; expected an IANA name such as Europe/Paris, "
                         "America/New_York or UTC") from None


def iso(epoch: float, period_s: float = 1.0) -> str:
    """Epoch seconds → ISO 8601 UTC with a Z, written as finely as a `period_s` grid needs, alike for
    every time on it (so labels sort as text): to the second, the millisecond (0.5 s, 16 ms) or the
    microsecond (64 Hz: 15.625 ms); a time off a whole-second grid to the millisecond."""
    d = datetime.fromtimestamp(round(epoch, 6), timezone.utc)
    spec = next((spec for spec, unit in (("seconds", 1), ("milliseconds", 1e-3))
                 if abs(period_s / unit - round(period_s / unit)) < 1e-6 and (unit < 1 or epoch == int(epoch))),
                "microseconds")
    return d.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


class BundleClock:
    """The clock a bundle's naive times are on: an IANA zone, or a fixed offset from UTC (older bundles).

    Args:
        timezone: an IANA zone name (bundle format 5); wins over `utc_offset_s`.
        utc_offset_s: seconds the wall clock is ahead of UTC (formats 3 and 4), 0 by default.
        dayfirst: whether `01/03/2024` is 1 March (True) or 3 January (False); None: not known.
    """

    def __init__(self, timezone: str | None = None, utc_offset_s: float = 0.0, dayfirst: bool | None = None):
        self.timezone = timezone
        self.zone = zone(timezone) if timezone is not None else None
        self.utc_offset_s = 0.0 if self.zone is not None else float(utc_offset_s)
        self.dayfirst = dayfirst

    @classmethod
    def from_manifest(cls, manifest: dict) -> "BundleClock":
        """The clock of a bundle's manifest (UTC when it has no derived inputs or no clock)."""
        return cls.from_section((manifest or {}).get("derived_inputs"))

    @classmethod
    def from_section(cls, section) -> "BundleClock":
        """The clock of a manifest's (or checkpoint's) `derived_inputs` section, or UTC for None."""
        section = section or {}
        return cls(section.get("timezone"), section.get("utc_offset_s", 0.0), section.get("dayfirst"))

    def __repr__(self) -> str:
        return f"BundleClock({self.timezone!r})" if self.zone else f"BundleClock(utc_offset_s={self.utc_offset_s:g})"

    def epoch(self, value, after: float | None = None) -> float:
        """Epoch seconds (UTC) of a reading's time, by the module's rule.

        Args:
            value: epoch s or ms (number or numeric text), ISO 8601 text, a datetime or numpy datetime64.
            after: the previous epoch from the same source; resolves a naive time in a DST fold.
        Raises:
            TimeError: not a time, or not between EARLIEST and LATEST.
        """
        if isinstance(value, float):                       # the usual case first: no parsing
            return self._number(value, after)
        if isinstance(value, bool) or value is None:
            raise TimeError(f"time {_show(value)} is not a time; expected {TIME_HELP}")
        if isinstance(value, int):
            if not -_INT_BOUND < value < _INT_BOUND:
                raise TimeError(f"time {_show(value)} is outside {SPAN}; expected {TIME_HELP}")
            return self.epoch(float(value), after)
        if isinstance(value, str):
            return self._text(value, after)
        if isinstance(value, datetime):
            return self._datetime(value, after)
        return self._other(value, after)

    def wall(self, epoch: float) -> float:
        """Seconds since 1970-01-01 00:00 on the bundle's wall clock (local time in its zone) at `epoch`."""
        e = _plausible(epoch, epoch)
        if self.zone is None:
            return e + self.utc_offset_s
        return e + datetime.fromtimestamp(e, self.zone).utcoffset().total_seconds()

    def walls(self, epochs):
        """`wall` of every epoch in a numpy array (float64, same shape)."""
        import numpy as np
        e = np.asarray(epochs, np.float64)
        if self.zone is None:
            return e + self.utc_offset_s
        return np.fromiter((self.wall(float(v)) for v in e.ravel()), np.float64, e.size).reshape(e.shape)

    def local(self, naive: datetime, after: float | None = None) -> float:
        """Epoch seconds of a naive wall-clock time on this clock (folds by `after`, gaps shifted forward)."""
        if self.zone is None:
            return (naive - _EPOCH).total_seconds() - self.utc_offset_s
        e0 = naive.replace(tzinfo=self.zone, fold=0).timestamp()
        e1 = naive.replace(tzinfo=self.zone, fold=1).timestamp()
        if e1 > e0 and after is not None and after >= e0:   # the repeated hour, its first pass already seen
            return e1
        return e0                                          # unambiguous, the first pass, or a gap (forward)

    def _text(self, value: str, after) -> float:
        text = value.strip()
        if len(text) > MAX_TEXT:
            raise TimeError(f"time {_show(value)} is {len(text)} characters long; expected {TIME_HELP}")
        try:
            number = float(text.replace(",", ".") if _COMMA_NUMBER.fullmatch(text) else text)   # a CSV cell
        except ValueError:
            pass
        else:
            return self._number(number, after)
        text = _UTC_WORD.sub("+00:00", text)
        iso = text[:-1] + "+00:00" if text[-1:] in "zZ" and text else text
        try:
            parsed = datetime.fromisoformat(iso)
        except ValueError:
            parsed = _logger_time(iso, self.dayfirst, value)       # (ISO 8601's 24:00, a logger's forms)
            if parsed is None:
                raise TimeError(f"time {_show(value)} is not an ISO 8601 date-time or epoch seconds; expected "
                                f"{TIME_HELP}") from None
        return _plausible(self._datetime(parsed, after), value)

    def _number(self, value: float, after) -> float:
        if SERIAL_DAYS[0] <= value <= SERIAL_DAYS[1]:     # a spreadsheet's serial date, on the bundle's clock
            return self.local(SERIAL_ORIGIN + timedelta(seconds=round(value * 864000.0) / 10.0), after)
        unit = 1e9 if value > NS_ABOVE else 1e6 if value > US_ABOVE else 1e3 if value > MS_ABOVE else 1.0
        return _plausible(value / unit, value)

    def _datetime(self, value: datetime, after) -> float:
        try:
            if value.tzinfo is None or value.utcoffset() is None:
                return _plausible(self.local(value, after), value)
            return _plausible((value - _EPOCH_UTC).total_seconds(), value)
        except (OverflowError, ValueError):
            raise TimeError(f"time {_show(value)} is outside {SPAN}; expected {TIME_HELP}") from None

    def _other(self, value, after) -> float:
        """numpy numbers and datetime64 (numpy is only touched when such a value arrives)."""
        kind = type(value).__module__
        if kind == "numpy":
            import numpy as np
            if isinstance(value, np.integer):
                return self.epoch(int(value), after)
            if isinstance(value, np.floating):
                return self.epoch(float(value), after)
            if isinstance(value, np.datetime64):
                if np.isnat(value):
                    raise TimeError(f"time {_show(value)} is not a time (NaT); expected {TIME_HELP}")
                wall = float((value - np.datetime64("1970-01-01T00:00:00")) / np.timedelta64(1, "s"))
                if not EARLIEST - 86400 <= wall <= LATEST + 86400:
                    raise TimeError(f"time {_show(value)} is outside {SPAN}; expected {TIME_HELP}")
                return self._datetime(_EPOCH + timedelta(seconds=wall), after)
        raise TimeError(f"time {_show(value)} ({type(value).__name__}) is not a time; expected {TIME_HELP}")


def _plausible(epoch: float, value) -> float:
    """`epoch` when it lies in EARLIEST..LATEST, else a TimeError naming `value`."""
    if EARLIEST <= epoch <= LATEST:
        return epoch
    what = "not finite" if epoch != epoch or epoch in (math.inf, -math.inf) else f"outside {SPAN}"
    raise TimeError(f"time {_show(value)} is {what}; expected {TIME_HELP}")


# A logger's or spreadsheet's date-time: day, month (a number or a name) and year, in either order
# of the first two, or the year first; a weekday before it; a time of day after a space, T or comma
# (12-hour with AM/PM; the hour alone too), or before it (`13:00 31.03.2024`, with its minutes or
# AM/PM); a UTC offset last.
_COMMA_NUMBER = re.compile(r"[-+]?\d+,\d+")                    # 45352,041667: a decimal comma
_UTC_WORD = re.compile(r"\s*\b(?:UTC|GMT)$", re.IGNORECASE)       # 12:00:00 UTC: +00:00
_TIME = (r"(?P<h>\d{1,2})(?::(?P<m>\d\d)(?::(?P<s>\d\d)(?:[.,](?P<f>\d{1,9}))?)?)?"
         r"\s*(?:(?P<half>[AaPp])\.?[Mm]\.?)?")
_ZONE = r"\s*(?P<zone>Z|[+-]\d\d:?\d\d)?"
_WEEKDAY = r"(?:[A-Za-z]{3,9},?\s+)?"
_DATES = (
    r"(?P<a>\d{1,4})(?P<sep>[./-])(?P<b>\d{1,2}|[A-Za-z]{3,9})(?P=sep)(?P<c>\d{1,4})",   # 31.03.2024, 2024/03/31, 31-Mar-2024
    r"(?P<a>\d{1,2})\s+(?P<b>[A-Za-z]{3,9})\.?\s+(?P<c>\d{4})",                          # 31 Mar 2024
    r"(?P<b>[A-Za-z]{3,9})\.?\s+(?P<a>\d{1,2}),?\s+(?P<c>\d{4})")                       # Mar 31, 2024
_LOGGER = ([re.compile(_WEEKDAY + date + r"(?:(?:,?[ T]+|,)" + _TIME + ")?" + _ZONE) for date in _DATES]
           + [re.compile(r"(?=\d{1,2}(?::|\s*[AaPp]))" + _TIME + r",?\s+" + _WEEKDAY + date + _ZONE)    # 13:00 31.03.2024
              for date in _DATES])
_MONTHS = {m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}


def _logger_time(text: str, dayfirst: bool | None, value) -> datetime | None:
    """The datetime a logger's date-time names (as training's pandas reads it), or None when the text
    has no such form. Raises TimeError where the day and month cannot be told apart."""
    g = next((m.groupdict() for r in _LOGGER if (m := r.fullmatch(text))), None)
    if g is None:
        return None
    try:
        year, month, day = _date(g["a"], g["b"], g["c"], dayfirst, value)
        hour, minute, second = int(g["h"] or 0), int(g["m"] or 0), int(g["s"] or 0)
        if g["half"]:
            if not 1 <= hour <= 12:
                raise ValueError
            hour = hour % 12 + (12 if g["half"] in "Pp" else 0)
        end = hour == 24 and not (minute or second or int(g["f"] or 0))        # a day's 24:00: the next day's 00:00
        out = datetime(year, month, day, 0 if end else hour, minute, second, int((g["f"] or "0")[:6].ljust(6, "0")))
        out += timedelta(days=1) if end else timedelta(0)
        return out.replace(tzinfo=_zone(g["zone"])) if g["zone"] else out
    except TimeError:
        raise
    except ValueError:
        raise TimeError(f"time {_show(value)} is no date and time of day; expected {TIME_HELP}") from None


def _date(a: str, b: str, c: str, dayfirst: bool | None, value) -> tuple:
    """(year, month, day) of a date's three fields as written (a: the first number, b: the second
    or a month's name, c: the last)."""
    month = int(b) if b.isdigit() else _MONTHS.get(b[:3].lower(), 0)
    if len(a) == 4:                                         # 2024/03/31, 2024-Mar-31
        return int(a), month, int(c)
    if not b.isdigit():                                     # 31-Mar-2024, Mar 31, 2024
        return _year(c), month, int(a)
    day, month = _day_month(int(a), int(b), dayfirst, value)
    return _year(c), month, day


def _zone(text: str) -> timezone:
    if text == "Z":
        return timezone.utc
    sign, digits = (-1 if text[0] == "-" else 1), text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def _year(text: str) -> int:
    """A year as written; two digits within 50 years of today (dateutil's rule, which training follows)."""
    year = int(text)
    if len(text) > 2:
        return year
    now = datetime.now().year
    year += now // 100 * 100
    return year - 100 if year >= now + 50 else year + 100 if year < now - 50 else year


def _day_month(a: int, b: int, dayfirst: bool | None, value) -> tuple:
    """(day, month) of two numbers: the one above 12 is the day; otherwise the bundle's order."""
    if a > 12 or b > 12:
        return (a, b) if a > 12 or (dayfirst and b <= 12) else (b, a)
    if dayfirst is None:
        raise TimeError(f"time {_show(value)} could name the day or the month first, and the bundle does not say "
                        "which (a bundle trained on such times records it: train it again with this version); "
                        f"expected {TIME_HELP}")
    return (a, b) if dayfirst else (b, a)
