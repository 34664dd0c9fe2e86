"""A logger export's times on the device: the model trained on `31.03.2024 13:00`, on `3/31/2024
1:00 PM` or on a date column beside a time column streams that same file, reading every time as
training read it. Before, the device read ISO 8601 and epoch numbers alone: every line was skipped,
or a `Date` column of days alone put a whole day in one period. Each test failed on the code before."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_module
from test_serve import REL, values
from test_serve_edges import serve_stdin
from runtime.times import BundleClock, TimeError
from train.data import load_series
from train.times import NAT, time_ns

_T = pd.date_range("2024-03-01", periods=1000, freq="37min")       # every day of a month, every minute pattern

FORMATS = {                       # a column as loggers and spreadsheets write it, and its order of day and month
    "dots, day first": (_T.strftime("%d.%m.%Y %H:%M"), True),
    "dots, seconds": (_T.strftime("%d.%m.%Y %H:%M:%S"), True),
    "slashes, day first": (_T.strftime("%d/%m/%Y %H:%M"), True),
    "slashes, month first, 12-hour": (pd.Index([f"{t.month}/{t.day}/{t.year} {t:%I:%M %p}" for t in _T]), False),
    "dashes, day first": (_T.strftime("%d-%m-%Y %H:%M"), True),
    "year first, slashes": (_T.strftime("%Y/%m/%d %H:%M:%S"), False),
    "two-digit year": (_T.strftime("%d.%m.%y %H:%M"), True),
    "month name": (_T.strftime("%d-%b-%Y %H:%M"), False),
    "year first, month name": (_T.strftime("%Y-%b-%d %H:%M"), None),
    "fractions of a second": (_T.strftime("%d.%m.%Y %H:%M:%S.250"), True),
    "seven-digit fraction": (_T.strftime("%d.%m.%Y %H:%M:%S.0000000"), True),
    "UTC written out": (_T.strftime("%Y-%m-%d %H:%M:%S UTC"), None),
    "GMT written out": (_T.strftime("%Y-%m-%d %H:%M:%S GMT"), None),
    "month name first": (pd.Index([f"{t:%b} {t.day}, {t.year} {t:%I:%M %p}" for t in _T]), None),
    "weekday and month name": (_T.strftime("%a %d %b %Y %H:%M:%S"), None),
    "RFC 2822": (_T.strftime("%a, %d %b %Y %H:%M:%S +0000"), None),
    "hour alone, 12-hour": (pd.Index([f"{t.month}/{t.day}/{t.year} {t:%I %p}" for t in _T]), False),
    "hour alone, 24-hour": (_T.strftime("%d.%m.%Y %H"), True),
    "time of day first": (_T.strftime("%H:%M %d.%m.%Y"), True),
    "time of day first, seconds, month name": (_T.strftime("%H:%M:%S %d %b %Y"), None),
    "time of day first, 12-hour, comma": (pd.Index([f"{t:%I:%M %p}, {t.month}/{t.day}/{t.year}" for t in _T]), False),
}


@pytest.mark.parametrize("name", FORMATS)
def test_each_time_reads_on_the_device_as_training_read_it(name):
    """The device's rule, told only the bundle's day order, gives training's time for every row."""
    text, dayfirst = FORMATS[name]
    col = pd.Series(list(text))
    trained = time_ns(col, "time", BundleClock()) / 1e9
    assert not (trained == NAT / 1e9).any()
    clock = BundleClock(dayfirst=dayfirst)
    np.testing.assert_allclose([clock.epoch(v) for v in col], trained, rtol=0, atol=1e-6)   # (ns / 1e9: float64)


def test_numbers_and_day_ends_read_as_training_reads_them():
    """Epochs in µs and ns (as databases export them), a spreadsheet serial day with a decimal comma,
    a day-first date's 24:00 (the next day's 00:00), all as training reads them; `12:00 UTC` on a
    data clock of Berlin is 12:00 UTC in training too (it was read as Berlin's 12:00, 2 h off)."""
    seconds = (_T[:200] - pd.Timestamp(0)).total_seconds().to_numpy()
    for unit in (1e6, 1e9):
        col = pd.Series((seconds * unit).astype("int64"))
        np.testing.assert_array_equal(time_ns(col, "time", BundleClock()) / 1e9, seconds)
        assert [BundleClock().epoch(int(v)) for v in col[:5]] == list(seconds[:5])
    clock = BundleClock()
    assert clock.epoch("45352,041667") == clock.epoch(45352.041667)
    ends = pd.Series(["29.02.2024 23:00", "29.02.2024 24:00", "01.03.2024 01:00"])
    trained = time_ns(ends, "time", clock) / 1e9
    np.testing.assert_array_equal([BundleClock(dayfirst=True).epoch(v) for v in ends], trained)
    assert trained[1] == clock.epoch("2024-03-01T00:00")
    berlin = BundleClock("Europe/Berlin")
    written = pd.Series(["2024-03-01 12:00:00 UTC", "2024-03-01 13:00:00 GMT"])
    assert list(time_ns(written, "time", berlin)) == list(time_ns(pd.Series(["2024-03-01 12:00:00Z", "2024-03-01 13:00:00Z"]), "time", berlin))
    assert berlin.epoch(written[0]) == berlin.epoch("2024-03-01T12:00:00Z")


def test_postgres_hour_offsets_across_a_dst_change_read_as_instants():
    """psql writes timestamptz with an hour-only offset (`+02`); across Berlin's fall-back the column
    holds +02 and +01. Training said pandas' "Mixed timezones detected" and stopped (`+02` did not
    count as an offset, so the column was read as naive); now every row is its instant, as on the
    device. A date alone (`2024-10-05`) is still no offset."""
    from train.times import _aware_rows
    col = pd.Series(["2024-10-27 01:30:00+02", "2024-10-27 02:00:00+02", "2024-10-27 02:30:00.5+02",
                     "2024-10-27 02:00:00+01", "2024-10-27 02:30:00+01", "2024-10-27 03:00:00-01"])
    trained = time_ns(col, "time", BundleClock("Europe/Berlin")) / 1e9
    assert list(trained) == [BundleClock().epoch(v) for v in col]
    assert list(np.diff(trained)) == [1800, 1800.5, 1799.5, 1800, 9000]
    assert not _aware_rows(pd.Series(["2024-10-05", "2024-10-06"]), "date")


def test_the_device_reads_the_cells_and_headers_training_reads():
    """TRUE/FALSE cells (a door contact: training reads 1 and 0), a Unicode minus (−2.0), a header's
    unit (`temp [°C]` is temp), a pandas index's empty time header (training names it `Unnamed: 0`)."""
    from runtime.readings import cell_number, parse_header, time_columns
    assert [cell_number(c) for c in ("TRUE", "false", "True", "\u22122.5")] == [1.0, 0.0, 1.0, -2.5]
    assert parse_header("time,temp [°C],RH[%]", ["temp", "RH"], ",", "f") == ["time", "temp", "RH"]
    assert time_columns(["", "temp"], ["Unnamed: 0"]) == (0,)
    s = load_series(_write_text("time,temp\n" + "".join(f"2024-03-{1 + i // 24:02d}T{i % 24:02d}:00,\u2212{i % 7}.5\n"
                                                         for i in range(600))), "temp")
    assert s.target[:3].tolist() == [-0.5, -1.5, -2.5]
    eu = load_series(_write_text("time;temp\n" + "".join(f"2024-03-{1 + i // 24:02d}T{i % 24:02d}:00;{i % 7},5 °C\n"
                                                         for i in range(600))), "temp")
    assert eu.target[:3].tolist() == [0.5, 1.5, 2.5] and eu.units["temp"] == "°C"


@pytest.mark.parametrize("first", [0, 1])
def test_a_date_column_beside_an_hour_number_reads_as_times(first):
    """`date,hour,value` with the hour a number, 0-23 or 1-24 (an hour-ending convention: its 24 is
    the next day's 00:00, as a day's 24:00 is): one time column, as the device joins them too. Before,
    the rows collapsed to one a day and training said there were too few rows."""
    from runtime.readings import time_text
    t = pd.date_range("2024-03-01 01:00" if first else "2024-03-01", periods=600, freq="h")
    hours = [24 if first and h.hour == 0 else h.hour for h in t]
    days = [(h - pd.Timedelta(hours=1) if first and h.hour == 0 else h).strftime("%Y-%m-%d") for h in t]
    text = "date,hour,value\n" + "".join(f"{d},{h},{i % 24}\n" for i, (d, h) in enumerate(zip(days, hours)))
    s = load_series(_write_text(text), "value")
    assert len(s.target) == 600 and s.period_s == 3600.0 and s.start_s == (t[0] - pd.Timestamp(0)).total_seconds()
    assert s.time_source["time_columns"] == ["date", "hour"]
    clock = BundleClock()
    row = ["2024-03-01", "24" if first else "13", "1.0"]
    assert clock.epoch(time_text(row, (0, 1))) == clock.epoch("2024-03-02T00:00" if first else "2024-03-01T13:00")


def test_hostile_and_partial_times_are_refused_at_once():
    """A 63-character time of repeated `, ` is refused at once (the time regex backtracked for 49 s:
    one reading stalled serve); a superscript digit in an hour cell is no time (stream stopped at its
    ValueError); a row without its date or its time has none (training drops it; the device read `13`
    as 1970); a `date` column already holding full times beside a `time` column is read alone (a
    bundle before time_columns: every line was skipped). Found by a review, 2026-12-07."""
    import time as clock_time
    from runtime.readings import time_columns, time_text
    start = clock_time.perf_counter()
    for text in ("1.1.24" + ", " * 28 + "x", "31.03.2024" + ", " * 26 + "x"):
        with pytest.raises(TimeError):
            BundleClock().epoch(text)
    assert clock_time.perf_counter() - start < 1.0
    with pytest.raises(TimeError):
        BundleClock().epoch(time_text(["2024-03-31", "\u00b2", "1"], (0, 1)))
    assert time_text(["", "13", "1"], (0, 1)) == time_text(["2024-03-31", "", "1"], (0, 1)) == ""
    assert time_columns(["date", "time", "T"]) == (0, 1)
    assert time_text(["2024-03-31T13:00:00", "1711890000", "1"], (0, 1)) == "2024-03-31T13:00:00"


def _write_text(text):
    import tempfile
    f = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    f.write(text)
    f.close()
    return f.name


def test_an_order_the_bundle_does_not_name_is_refused_where_it_matters():
    """Without a day order (a bundle trained on ISO times), 13.03.2024 can only be day first and
    is read; 01/03/2024 could be either and is one clear line, never a guess."""
    clock = BundleClock()
    assert clock.epoch("13.03.2024 10:00") == clock.epoch("2024-03-13T10:00")
    assert clock.epoch("3/13/2024 10:00 AM") == clock.epoch("2024-03-13T10:00")
    with pytest.raises(TimeError, match="day or the month first"):
        clock.epoch("01/03/2024 10:00")
    for bad in ("32.01.2024 10:00", "01.13.2024 25:00", "1/2/3/4", "29.02.2023 10:00", "10:00 PM"):
        with pytest.raises(TimeError):
            BundleClock(dayfirst=True).epoch(bad)


def _export_csv(path, times, values, header, sep=","):
    rows = [header] + [f"{t}{sep}{v:.2f}" for t, v in zip(times, values)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_a_date_column_beside_a_time_column_streams_as_trained(tmp_path):
    """`Datum;Uhrzeit;Temperatur` with day-first dates (a German logger): training joins the two
    columns, the bundle names them and the day order (derived_inputs.time_columns, .dayfirst), and
    `stream` over the same file forecasts every line, one step a period, at training's times."""
    t = pd.date_range("2024-03-01", periods=1200, freq="h")
    v = 20 + 5 * np.sin(2 * np.pi * t.hour.to_numpy() / 24) + np.random.default_rng(0).normal(0, 0.3, len(t))
    src = _export_csv(tmp_path / "logger.csv", [f"{a};{b}" for a, b in zip(t.strftime("%d.%m.%Y"), t.strftime("%H:%M"))],
                      v, "Datum;Uhrzeit;Temperatur", sep=";")
    ck = str(tmp_path / "m.pt")
    run_module("train", "--data", src, "--target", "Temperatur", "--epochs", "1", "--hidden", "4", "--quiet",
               "--delimiter", ";", "--out", ck)
    run_module("export", ck, "--out", str(tmp_path / "b"), "--formats", "onnx")
    m = json.load(open(tmp_path / "b" / "manifest.json"))["derived_inputs"]
    assert m["time_columns"] == ["Datum", "Uhrzeit"] and m["dayfirst"] is True
    out = tmp_path / "out.csv"
    p = run_module("runtime", "stream", str(tmp_path / "b"), "--input", src, "--delimiter", ";", "--output", str(out))
    stats = json.loads(p.stderr.strip().splitlines()[-1])
    assert stats["readings"] == 1200 and stats["skipped_lines"] == stats["same_period"] == stats["missing_periods"] == 0
    rc, msgs, err = serve_stdin(tmp_path / "b", open(src, "rb").read().replace(b";", b","))     # serve's CSV: commas
    assert rc == 0 and len(msgs) == 1200, err[-800:]
    got = pd.read_csv(out, sep=None, engine="python").iloc[:, 2:].to_numpy()
    np.testing.assert_allclose(values(msgs), got, rtol=REL, atol=1e-4)
    series = load_series(src, "Temperatur", delimiter=";")
    first = pd.read_csv(out, sep=None, engine="python").iloc[0]
    assert (str(first["Datum"]), str(first["Uhrzeit"])) == ("01.03.2024", "00:00")       # passed through as written
    assert series.start_s == BundleClock(dayfirst=True).epoch("01.03.2024 00:00")


def _rows(t, v, sep, dec, unit=""):
    return [f"{a}{sep}{b:.2f}{unit}".replace(".", dec) if dec != "." else f"{a}{sep}{b:.2f}{unit}"
            for a, b in zip(t.strftime("%Y-%m-%dT%H:%M"), v)]


def test_decimal_commas_and_units_in_cells_stream_as_trained(tmp_path):
    """A file of `;` and decimal commas, trained without flags (train finds both): `stream` over it
    with no flag reads it as training did (the bundle's source.data_spec); so does a file of
    `21.30 °C` cells for a feature whose unit is °C, and serve over each. Before, every reading was
    missing (imputed) and nothing said so; a column that reads no number is now said once."""
    t = pd.date_range("2024-03-01", periods=1200, freq="h")
    v = 20 + 5 * np.sin(2 * np.pi * t.hour.to_numpy() / 24) + np.random.default_rng(1).normal(0, 0.3, len(t))
    (tmp_path / "eu.csv").write_text("\n".join(["time;temp"] + _rows(t, v, ";", ",")) + "\n")
    (tmp_path / "plain.csv").write_text("\n".join(["time,temp"] + _rows(t, v, ",", ".")) + "\n")
    (tmp_path / "units.csv").write_text("\n".join(["time,temp"] + _rows(t, v, ",", ".", " °C")) + "\n")
    ck = str(tmp_path / "m.pt")
    run_module("train", "--data", str(tmp_path / "eu.csv"), "--target", "temp", "--epochs", "1", "--hidden", "4",
               "--quiet", "--units", "temp=°C", "--out", ck)          # the delimiter and decimal mark found
    run_module("export", ck, "--out", str(tmp_path / "b"), "--formats", "onnx")
    got = {}
    for name in ("eu", "plain", "units"):
        out = tmp_path / f"{name}.out.csv"
        extra = ("--delimiter", ",", "--decimal", ".") if name != "eu" else ()
        p = run_module("runtime", "stream", str(tmp_path / "b"), "--input", str(tmp_path / f"{name}.csv"), *extra,
                       "--output", str(out))
        stats = json.loads(p.stderr.strip().splitlines()[-1])
        assert stats["readings"] == 1200 and stats["imputed"] == 0, (name, p.stderr[-600:])
        got[name] = pd.read_csv(out).iloc[:, 1:].to_numpy()
    np.testing.assert_array_equal(got["eu"], got["plain"])
    np.testing.assert_array_equal(got["units"], got["plain"])
    plain = (tmp_path / "plain.csv").read_text()
    variants = {"header unit": plain.replace("time,temp\n", "time,temp [°C]\n"),
                "metadata line": "Logger XYZ serial 1234\n" + plain}
    for what, text in variants.items():
        (tmp_path / "v.csv").write_text(text)
        p = run_module("runtime", "stream", str(tmp_path / "b"), "--input", str(tmp_path / "v.csv"), "--delimiter", ",",
                       "--decimal", ".", "--output", str(tmp_path / "v.out.csv"))
        np.testing.assert_array_equal(pd.read_csv(tmp_path / "v.out.csv").iloc[:, 1:].to_numpy(), got["plain"], err_msg=what)
        (tmp_path / "v.out.csv").unlink()
    units = (tmp_path / "units.csv").read_text()
    eu = (tmp_path / "eu.csv").read_text()
    for what, text in {"units in cells": units, "a trailing comma": plain.replace("\n", ",\n"), "; and decimal commas": eu}.items():
        rc, msgs, err = serve_stdin(tmp_path / "b", text.encode())
        assert rc == 0 and len(msgs) == 1200 and '"imputed_cells": 0' in err and '"malformed": 0' in err, (what, err[-600:])
        np.testing.assert_allclose(values(msgs), got["plain"], rtol=REL, atol=1e-4, err_msg=what)
    p = run_module("runtime", "stream", str(tmp_path / "b"), "--input", str(tmp_path / "eu.csv"), "--decimal", ".",
                   "--output", str(tmp_path / "x.csv"))
    warned = [line for line in p.stderr.splitlines() if "reads no number" in line]
    assert len(warned) == 1 and "'temp'" in warned[0] and "--decimal ," in warned[0], p.stderr[-600:]


def test_serve_reads_the_time_column_training_found_in_a_bundle_without_calendar_inputs(tmp_path):
    """Weekly readings in a column named `week` (no calendar inputs at that period): training found
    the time column by its cells, but the bundle recorded it only with calendar inputs, so serve,
    which looks a time column up by name, read every line as arriving now: 200 readings, one
    forecast, no warning. The bundle now records its time column (and clock) without them too."""
    t = pd.date_range("2020-01-06", periods=200, freq="7D")
    v = 50 + 10 * np.sin(2 * np.pi * np.arange(200) / 52) + np.random.default_rng(2).normal(0, 1, 200)
    src = _export_csv(tmp_path / "weekly.csv", t.strftime("%d.%m.%Y"), v, "week,sales")
    ck = str(tmp_path / "m.pt")
    run_module("train", "--data", src, "--target", "sales", "--epochs", "1", "--hidden", "4", "--horizon", "2",
               "--quiet", "--out", ck)
    run_module("export", ck, "--out", str(tmp_path / "b"), "--formats", "onnx")
    m = json.load(open(tmp_path / "b" / "manifest.json"))["derived_inputs"]
    assert m["inputs"] == [] and m["time_columns"] == ["week"] and m["dayfirst"] is True
    rc, msgs, err = serve_stdin(tmp_path / "b", open(src, "rb").read())
    assert rc == 0 and len(msgs) == 200, err[-800:]
    assert [x["time"][:10] for x in msgs[:2]] == ["2020-01-06", "2020-01-13"]
