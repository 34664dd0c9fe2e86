"""Logger and spreadsheet exports as they come (found probing about 120 odd files, 2026-12-07): each
read as written, or refused in one line naming what was wrong. Each test failed on the code before."""
import numpy as np
import pandas as pd
import pytest

from conftest import run_module
from test_train_input import _error, _table, _write
from train.data import DataError, load_series, prepare_series


def _hourly(n=2000, seed=0):
    import pandas as pd
    t = pd.date_range("2024-03-01", periods=n, freq="h")
    v = 20 + 5 * np.sin(2 * np.pi * t.hour.to_numpy() / 24) + np.random.default_rng(seed).normal(0, 0.3, n)
    return t, v.round(2)


def _train(tmp_path, t, v, check=True):
    import pandas as pd
    path = _write(tmp_path, pd.DataFrame({"time": t.strftime("%Y-%m-%d %H:%M"), "temp": v}).to_csv(index=False))
    return run_module("train", "--data", path, "--target", "temp", "--epochs", "1", "--hidden", "4", "--quiet",
                      "--out", str(tmp_path / "m.pt"), check=check)


def test_a_first_segment_shorter_than_the_horizon_trains(tmp_path):
    """One reading days before the rest (a test reading at install): its segment cannot hold a
    target six steps ahead; it was 'could not broadcast input array from shape (0,)'."""
    import pandas as pd
    t, v = _hourly()
    p = _train(tmp_path, t.insert(0, pd.Timestamp("2024-02-20 12:00")), np.insert(v, 0, 20.0))
    assert "checkpoint:" in p.stdout and "2 segment(s)" in p.stdout


def test_a_sensor_stuck_over_the_test_split_gets_a_verdict(tmp_path):
    """A baseline exact on the test split (MASE 0): the verdict divided by it (ZeroDivisionError)."""
    t, v = _hourly()
    v[1650:] = 21.5
    p = _train(tmp_path, t, v)
    assert "is exact on the test split" in p.stdout and "Traceback" not in p.stderr


def test_segments_too_short_to_score_are_said_before_training(tmp_path):
    """A logger that runs 08:00-17:00: every segment is ten readings, none long enough to score a
    forecast; training ran to the end, then 'need at least one array to concatenate'."""
    import pandas as pd
    days = pd.date_range("2024-01-01", periods=300, freq="D")
    t = pd.DatetimeIndex([d + pd.Timedelta(hours=h) for d in days for h in range(8, 18)])
    p = _train(tmp_path, t, 20 + np.sin(np.arange(len(t))), check=False)
    assert p.returncode == 2 and "no test forecast can be scored" in p.stderr and "--max-gap" in p.stderr
    assert "epoch" not in p.stdout and "Traceback" not in p.stderr


@pytest.mark.parametrize("fmt,start", [("%d.%m.%Y %H:%M", "2024-03-01"), ("%d/%m/%Y %H:%M", "2024-03-01"),
                                       ("%d/%m/%Y %H:%M", "2024-05-01"), ("%m/%d/%Y %I:%M %p", "2024-03-01")])
def test_day_first_dates_are_read_day_first(fmt, start):
    """`31.03.2024 13:00` (and `31/03/2024`): pandas read the 1st-12th of each month month first and
    the rest day first, and sorted the series into pieces; ten days of the 1st-10th (no field above
    12 says which) are read the dense way; US `03/31/2024 1:00 PM` stays month first."""
    import pandas as pd
    n = 2000 if start.endswith("03-01") else 240
    t = pd.date_range(start, periods=n, freq="h")
    df = pd.DataFrame({"time": t.strftime(fmt), "temp": 20 + np.sin(np.arange(n) / 4)})
    s = prepare_series(df, "temp")
    assert s.segments == [(0, n)] and s.report.unsorted_rows == 0
    assert s.start_s == (t[0] - pd.Timestamp(0)) / pd.Timedelta(seconds=1) and s.period_s == 3600.0


def test_spreadsheet_serial_dates_are_dates(tmp_path):
    """Excel's serial days (45352.041667 is 2024-03-01 01:00) were read as epoch seconds: a reading
    every 41.67 ms on 1970-01-01, with no calendar inputs and no daily baseline, said nowhere."""
    import pandas as pd
    t = pd.date_range("2024-03-01", periods=600, freq="h")
    serial = ((t - pd.Timestamp("1899-12-30")) / pd.Timedelta(days=1)).to_numpy().round(6)
    path = _write(tmp_path, pd.DataFrame({"time": serial, "temp": 20 + np.sin(np.arange(600) / 4)}).to_csv(index=False))
    s = load_series(path, "temp")
    assert s.period_s == 3600.0 and s.start_s == (t[0] - pd.Timestamp(0)) / pd.Timedelta(seconds=1)
    p = run_module("train", "--data", path, "--target", "temp", "--epochs", "1", "--hidden", "4", "--quiet",
                   "--out", str(tmp_path / "m.pt"))
    assert "time: a reading every 1h (estimated from the intervals), 2024-03-01 00:00:00 to 2024-03-25 23:00:00" in p.stdout


def test_thousands_separators_are_read_whole_where_nothing_else_fits(tmp_path):
    """A US tab export ("2,004" quoted): the hint said `--decimal ,`, and following it trained on
    values 1000x too small without a word. Grouped numbers are read whole where the table's other
    numbers show decimal points; "2,004" alone names both readings; "1,512" of a European file
    stays a decimal comma (read whole, it was 1000x too large)."""
    import pandas as pd
    t = pd.date_range("2024-03-01", periods=300, freq="h").strftime("%Y-%m-%d %H:%M")
    load = (2000 + 300 * np.sin(np.arange(300) / 4)).round().astype(int)
    text = "time\ttemp\tload\n" + "".join(f'{a}\t{20 + i / 7:.2f}\t"{b:,d}"\n' for i, (a, b) in enumerate(zip(t, load)))
    s = load_series(_write(tmp_path, text, "load.txt"), "load", delimiter="\t")
    np.testing.assert_array_equal(s.target, load)
    assert s.report.thousands == {"load": int((load >= 1000).sum())}
    assert "thousands separators read as whole numbers" in "; ".join(s.report.lines())
    alone = "time\tT1\n" + "".join(f'{a}\t"{b:,d}"\n' for a, b in zip(t, load))
    msg = _error(_write(tmp_path, alone, "alone.txt"), delimiter="\t")
    assert "pass --decimal ," in msg and "if ',' separates thousands here" in msg
    european = "time;T1\n" + "".join(f"{a};" + f"{1 + b / 10000:.3f}".replace(".", ",") + "\n" for a, b in zip(t, load))
    msg = _error(_write(tmp_path, european, "eu.csv"), delimiter=";")
    assert "pass --decimal ," in msg


def test_a_jittered_loggers_period_is_its_schedule():
    """Readings ±20% around an hourly schedule: the median interval (3594 s in a probe) made row k's
    time drift hours from its reading's; a clock 1% slow keeps its own period."""
    import pandas as pd
    rng = np.random.default_rng(0)
    t = pd.date_range("2024-03-01", periods=2000, freq="h")
    jittered = t + pd.to_timedelta(rng.uniform(-0.2, 0.2, 2000) * 3600, unit="s")
    s = prepare_series(pd.DataFrame({"time": jittered.strftime("%Y-%m-%d %H:%M:%S"), "temp": rng.normal(size=2000)}),
                       "temp")
    assert s.period_s == 3600.0
    assert abs(s.wall_times()[-1] - (jittered[-1] - pd.Timestamp(0)) / pd.Timedelta(seconds=1)) < 0.2 * 3600
    slow = pd.Timestamp("2024-03-01") + pd.to_timedelta(3636.0 * np.arange(500), unit="s")
    s = prepare_series(pd.DataFrame({"time": slow.strftime("%Y-%m-%d %H:%M:%S"), "temp": rng.normal(size=500)}), "temp")
    assert s.period_s == 3636.0


@pytest.mark.parametrize("rate", [64, 128, 256, 50, 100, 30, 25])
@pytest.mark.parametrize("stamp", [np.floor, np.round])
def test_a_sub_second_rate_stamped_in_whole_ms_keeps_its_period(rate, stamp):
    """A 64 Hz accelerometer stamped in whole milliseconds (Daphnet: 15 and 16 ms apart): the period
    was the median interval, 16 ms, and the device's clock, flooring each reading's time by it, put
    165 of Daphnet's 7040 readings into the last one's period (skipped by `stream`, averaged by `serve`)."""
    import pandas as pd
    from runtime.service.clock import period_index
    ms = stamp(np.arange(3000) * 1000.0 / rate)
    t = pd.Timestamp("2024-03-01 12:00:00.5") + pd.to_timedelta(ms, unit="ms")
    s = prepare_series(pd.DataFrame({"time": t.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3],
                                     "v": np.random.default_rng(0).normal(size=3000)}), "v")
    assert s.period_s == 1 / rate and s.report.irregular_intervals == 0
    epoch = (t - pd.Timestamp(0)) / pd.Timedelta(seconds=1)
    assert np.all(np.diff([period_index(x, s.period_s) for x in epoch]) == 1)


@pytest.mark.parametrize("columns", [{"date": "%Y-%m-%d", "time": "%H:%M"}, {"time": "%H:%M", "date": "%d.%m.%Y"},
                                     {"Date": "%m/%d/%Y", "Time": "%I:%M %p"}])
def test_a_date_column_and_a_time_of_day_column_are_one_time(columns):
    """`date,time,value`: the dates repeated on each row of a day and the times of day were taken for
    24 series' ids ("pass --series-col time", which trained 24 daily series)."""
    import pandas as pd
    t = pd.date_range("2024-03-01", periods=600, freq="h")
    df = pd.DataFrame({name: t.strftime(fmt) for name, fmt in columns.items()})
    s = prepare_series(df.assign(temp=20 + np.sin(np.arange(600) / 4)), "temp")
    assert s.period_s == 3600.0 and s.segments == [(0, 600)] and s.features == ["temp"]
    assert s.start_s == (t[0] - pd.Timestamp(0)) / pd.Timedelta(seconds=1)


@pytest.mark.parametrize("code,every", [(-9999.0, 97), (-9999.0, 20), (-999.0, 97), (65535.0, 50)])
def test_a_loggers_no_reading_code_is_missing(code, every):
    """-9999 on 1% of the rows became the 1st percentile that sizes the spread, and -999 on a 20 degC
    sensor never reached 1000 spreads: both trained as readings."""
    import pandas as pd
    t = pd.date_range("2024-03-01", periods=2000, freq="h")
    v = 20 + 5 * np.sin(np.arange(2000) / 4)
    v[::every] = code
    s = prepare_series(pd.DataFrame({"time": t.strftime("%Y-%m-%d %H:%M"), "temp": v}), "temp")
    assert np.nanmin(s.target) > 14 and s.report.extreme_cells["temp"][0] == len(v[::every])


def test_a_code_inside_a_sensors_range_is_a_reading():
    """A pressure sensor around 1000 hPa reads 999.9 now and then: a reading, not a code."""
    import pandas as pd
    t = pd.date_range("2024-03-01", periods=2000, freq="h")
    v = (1000 + 3 * np.sin(np.arange(2000) / 40)).round(1)
    v[::50] = 999.9
    s = prepare_series(pd.DataFrame({"time": t.strftime("%Y-%m-%d %H:%M"), "p": v}), "p")
    assert not s.report.extreme_cells and np.count_nonzero(s.target == 999.9) >= 40


def test_a_day_ending_at_24_00_and_unreadable_times_are_said_as_such():
    """Loggers that write midnight as the day's 24:00: those rows did not read, and the report said
    "84 duplicate timestamps dropped; 2000 rows out of time order" of a file in order without one."""
    import pandas as pd
    t = pd.date_range("2024-03-01 01:00", periods=600, freq="h")
    text = [(x - pd.Timedelta(days=1)).strftime("%Y-%m-%d 24:00") if x.hour == 0 else x.strftime("%Y-%m-%d %H:%M")
            for x in t]
    text[7] = "ERR"
    s = prepare_series(pd.DataFrame({"time": text, "temp": 20 + np.sin(np.arange(600) / 4)}), "temp")
    r = s.report
    assert (r.unreadable_times, r.duplicate_timestamps, r.unsorted_rows, r.missing_samples) == (1, 0, 0, 1)
    assert s.start_s == (t[0] - pd.Timestamp(0)) / pd.Timedelta(seconds=1)
    assert "1 rows whose time does not read dropped" in "; ".join(r.lines())


def test_a_decimal_comma_file_with_error_tokens_reads(tmp_path):
    """`21,25` beside `#DIV/0!` with --decimal ,: pandas kept the column as text and nothing read
    ("pass --decimal ," though it was passed); the tokens are now missing cells, the rest numbers."""
    text = _table(sep=";", dec=",", n=300).splitlines()
    for i in range(5, 300, 50):
        cells = text[i].split(";")
        text[i] = ";".join([cells[0], "#DIV/0!", cells[2]])
    s = load_series(_write(tmp_path, "\n".join(text) + "\n"), "T1", delimiter=";", decimal=",")
    assert s.report.non_numeric_cells == {"T1": 6} and np.nanmin(s.target) > 15


def test_empty_columns_and_a_dead_sensor_are_named(tmp_path):
    """A delimiter ending every line made an empty column that cut every row ("too few rows ...
    {'train': 0 ...}"); one ending only the data lines got the hint --skip-rows 1, which made the
    first reading the header; a sensor dead from 60% on cut the rest, and nothing named it; a
    header without rows leaked numpy warnings."""
    rows = _table(n=600).splitlines()
    s = load_series(_write(tmp_path, "\n".join(r + "," for r in rows) + "\n", "a.csv"), "T1")
    assert s.features == ["T1", "RH_1"] and "Unnamed: 3" in s.report.skipped_columns
    s = load_series(_write(tmp_path, "\n".join(rows[:1] + [r + "," for r in rows[1:]]) + "\n", "b.csv"), "T1")
    assert s.features == ["T1", "RH_1"] and len(s.target) == 600
    dead = rows[:1] + [r if i < 360 else r.rsplit(",", 1)[0] + "," for i, r in enumerate(rows[1:])]
    p = run_module("train", "--data", _write(tmp_path, "\n".join(dead) + "\n", "c.csv"), "--target", "T1",
                   "--calendar", "none", "--quiet", "--out", str(tmp_path / "m.pt"), check=False)
    assert p.returncode == 2 and "RH_1 on 40% of them (--exclude RH_1 trains without)" in p.stderr
    assert "np.int64" not in p.stderr
    p = run_module("train", "--data", _write(tmp_path, rows[0] + "\n", "d.csv"), "--target", "T1", check=False)
    assert p.returncode == 2 and p.stderr.strip() == "error: d.csv has a header and no data rows below it"


def test_a_unit_after_every_number_is_read_as_the_columns_unit(tmp_path):
    """`21.3 C` in every cell: "not numeric ... choose numeric columns with --features" of the
    right column; now the numbers, with C as the column's unit, said in the report."""
    rows = _table(n=300).splitlines()
    text = "\n".join(rows[:1] + [",".join([r.split(",")[0], r.split(",")[1] + " C", r.split(",")[2]])
                                 for r in rows[1:]]) + "\n"
    s = load_series(_write(tmp_path, text), "T1")
    assert s.units == {"T1": "C"} and np.nanmin(s.target) > 15 and s.report.cell_units == {"T1": ("C", 300)}


def test_times_of_day_without_dates_are_refused_in_one_line(tmp_path):
    """`Time` holding 00:00..23:00 alone: each took today's date, 1976 of 2000 rows were dropped as
    duplicates, and the error was "too few rows" with numpy types in it."""
    times = [f"{i % 24:02d}:00" for i in range(600)]
    msg = _error(_write(tmp_path, _table(times=times, header="Time,T1,RH_1", n=600)))
    assert "time column 'Time' holds times of day without a date (such as '00:00')" in msg


def test_a_record_counter_is_no_input():
    """A Campbell logger's RECORD column (0, 1, 2, ...) was an input: on the device every reading
    after training lies beyond anything the model saw. Named a feature, it stays one."""
    import pandas as pd
    t = pd.date_range("2024-03-01", periods=500, freq="h")
    df = pd.DataFrame({"time": t.strftime("%Y-%m-%d %H:%M"), "RECORD": np.arange(500) + 17, "temp": np.sin(np.arange(500))})
    s = prepare_series(df, "temp")
    assert s.features == ["temp"] and s.report.counters == ["RECORD"]
    assert prepare_series(df, "temp", features=["RECORD", "temp"]).features == ["RECORD", "temp"]


def test_seconds_since_a_start_are_pointed_out(tmp_path):
    """A `time` column of seconds since the logger started reads as 1970: the report says so once."""
    rows = [f"{3600 * i},{20 + np.sin(i / 4):.2f}" for i in range(600)]
    p = run_module("train", "--data", _write(tmp_path, "time,T1\n" + "\n".join(rows) + "\n"), "--target", "T1",
                   "--epochs", "1", "--hidden", "4", "--quiet", "--out", str(tmp_path / "m.pt"))
    assert "1970-01-01 00:00:00 to 1970-01-25 23:00:00" in p.stdout and "pass --calendar none" in p.stdout


def test_reviewed_time_edges():
    """An hourly logger with extra event rows keeps its hour (the mean interval gave 3508 s); a daily
    file's `sunrise` is not its rows' time of day; seconds since a logger started, 20,000 on, are
    not spreadsheet days."""
    import pandas as pd
    rng = np.random.default_rng(1)
    t = pd.date_range("2024-03-01", periods=2000, freq="h")
    extra = t[rng.choice(2000, 200, replace=False)] + pd.to_timedelta(rng.integers(5, 55, 200), unit="min")
    both = t.append(extra).sort_values()
    s = prepare_series(pd.DataFrame({"time": both.strftime("%Y-%m-%d %H:%M"), "v": rng.normal(size=2200)}), "v")
    assert s.period_s == 3600.0
    d = pd.date_range("2024-01-01", periods=400, freq="D")
    daily = pd.DataFrame({"date": d.strftime("%Y-%m-%d"), "sunrise": [f"7:{i % 60:02d}" for i in range(400)],
                          "v": rng.normal(size=400)})
    s = prepare_series(daily, "v")
    assert s.period_s == 86400.0 and s.start_s == (d[0] - pd.Timestamp(0)) / pd.Timedelta(seconds=1)
    elapsed = pd.DataFrame({"time": 20000 + 10 * np.arange(600), "v": rng.normal(size=600)})
    assert prepare_series(elapsed, "v").period_s == 10.0


def test_many_series_none_scorable_is_one_line():
    """The first series without a test split: the 'nothing scorable' message itself raised
    'min() arg is an empty sequence' (after training)."""
    import pandas as pd
    from train.evaluate import evaluate
    from train.many import prepare_many
    from train.prepare import prepare
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=12, freq="h"), "node": "a"})
    t = [pd.Timestamp("2024-02-01") + pd.Timedelta(hours=30 * d + h) for d in range(100) for h in range(20)]
    df = pd.concat([a, pd.DataFrame({"time": t, "node": "b"})], ignore_index=True)
    df = df.assign(T=20 + rng.normal(size=len(df)), time=df["time"].dt.strftime("%Y-%m-%d %H:%M"))
    with pytest.raises(DataError, match="of 2 series, none can be scored; the first: no test forecast"):
        evaluate(None, prepare(prepare_many(df, "node", "T"), 6))


@pytest.mark.parametrize("freq, what", [("MS", "a month"), ("ME", "a month"), ("QS", "a quarter"), ("YS", "a year")])
def test_calendar_months_quarters_and_years_are_refused_in_one_line(tmp_path, freq, what):
    """Monthly readings (28-31 days apart) were put on a 31-day grid: two pairs of months merged and
    averaged, every forecast's time off by days (`Passengers+31d`), serve's periods off the file's.
    The device's periods have one length, so readings a calendar month, quarter or year apart are
    refused, saying so (a helper's probe, 2026-12-07)."""
    t = pd.date_range("2010-01-01", periods=120, freq=freq)
    path = tmp_path / "monthly.csv"
    pd.DataFrame({"Month": t.strftime("%Y-%m-%d"), "Passengers": np.arange(120) % 12 + 100.0}).to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"readings about {what} apart \(\d+ to \d+ days\): calendar"):
        load_series(str(path), "Passengers")


def test_naive_local_times_across_a_fall_back_hint_at_timezone(tmp_path):
    """15-minute naive Berlin times across the end of summer time, trained without --timezone:
    the repeated hour was counted as duplicates and rows out of order, with no word of why (a
    helper's probe). The report now names the step back and --timezone; with it, nothing repeats."""
    t = pd.date_range("2024-10-26", periods=300, freq="15min", tz="Europe/Berlin")
    path = tmp_path / "berlin.csv"
    pd.DataFrame({"time": t.strftime("%Y-%m-%d %H:%M:%S"), "v": np.sin(np.arange(300) / 10)}).to_csv(path, index=False)
    s = load_series(str(path), "v")
    assert "the times step back an hour (at '2024-10-27 02:00:00')" in " ".join(s.report.lines())
    s = load_series(str(path), "v", timezone="Europe/Berlin")
    assert s.report.duplicate_timestamps == 0 and not s.report.hour_back
