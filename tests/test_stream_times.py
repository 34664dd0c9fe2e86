"""`runtime stream` over readings whose times do not advance one sample period a line, as logger
exports often do: newest first, with gaps, faster than the bundle's period. The model steps once a
period, so `stream` keeps time as `serve` does and gives its forecasts for the same readings."""
import json

import numpy as np

from conftest import run_module
from test_serve import REL, T0, atol_of, period_of, readings, values
from test_serve_edges import csv_text, serve_stdin


def stream_text(bundle, text, tmp_path, *extra):
    """`stream --time-col time` over a CSV's text: (forecasts [rows, O] without the passed-through
    time, its stats, stderr). The daphnet bundle has no calendar inputs: its time is named."""
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(text)
    out.unlink(missing_ok=True)
    p = run_module("runtime", "stream", str(bundle), "--engine", "numpy", "--input", str(src), "--output", str(out),
                   *(extra or ("--time-col", "time")))
    rows = open(out).read().splitlines()[1:]
    stats = json.loads(p.stderr.strip().splitlines()[-1])
    return np.array([[float(v) for v in r.split(",")[1:]] for r in rows]).reshape(len(rows), -1), stats, p.stderr


def timed_text(features, x, times):
    return "time," + ",".join(features) + "\n" + "".join(
        f"{t}," + ",".join(repr(float(v)) for v in r) + "\n" for t, r in zip(times, x))


def test_a_gap_steps_the_missing_periods_as_serve_does(daphnet_bundle, tmp_path):
    """Five periods missing after the 20th reading: the model steps through them (the nan policy
    fills them, no row is written) and forecasts what serve does; before, stream went on as if
    the next reading came one period later."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 45)
    keep = [i for i in range(45) if not 20 <= i < 25]
    text = timed_text(features, x[keep], [T0 + i * period for i in keep])
    got, stats, _ = stream_text(daphnet_bundle, text, tmp_path)
    rc, msgs, err = serve_stdin(daphnet_bundle, text.encode())
    assert rc == 0, err[-2000:]
    assert len(got) == len(msgs) == 40
    np.testing.assert_allclose(got, values(msgs), rtol=REL, atol=atol_of(daphnet_bundle))
    assert stats["missing_periods"] == 5 and stats["readings"] == 40


def test_a_gap_past_the_longest_fill_starts_the_state_afresh(daphnet_bundle, tmp_path):
    """A day-long outage: the readings after it are forecast from a zero state, as by a new stream
    (serve's clock jump zeros every state), counted in `clock_jumps`."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 60)
    times = [T0 + i * period for i in range(30)] + [T0 + (1000 + i) * period for i in range(30)]
    got, stats, _ = stream_text(daphnet_bundle, timed_text(features, x, times), tmp_path)
    fresh, _, _ = stream_text(daphnet_bundle, timed_text(features, x[30:], times[30:]), tmp_path)
    np.testing.assert_allclose(got[30:], fresh, rtol=REL, atol=atol_of(daphnet_bundle))
    assert stats["clock_jumps"] == 1 and stats["missing_periods"] == 1000 - 30


def test_readings_newest_first_are_late_and_said_once(daphnet_bundle, tmp_path):
    """A file newest first (many web exports are): the first reading is forecast, every later one
    lies before it and is skipped as late, counted, and the warning says to sort the file once."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 30)
    times = [T0 + i * period for i in range(30)]
    got, stats, err = stream_text(daphnet_bundle, timed_text(features, x[::-1], times[::-1]), tmp_path)
    assert len(got) == 1 and stats["late"] == 29 and stats["readings"] == 1
    assert err.count("oldest first") == 1, err
    assert "Traceback" not in err


def test_readings_faster_than_the_period_are_counted_not_stepped(daphnet_bundle, tmp_path):
    """Two readings a period: the model steps once a period (the first reading of each); the second
    is skipped, counted in `same_period` and warned about once."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 20)
    times = [T0 + (i // 2) * period + (i % 2) * period / 3 for i in range(20)]
    got, stats, err = stream_text(daphnet_bundle, timed_text(features, x, times), tmp_path)
    once, _, _ = stream_text(daphnet_bundle, timed_text(features, x[::2], times[::2]), tmp_path)
    np.testing.assert_array_equal(got, once)
    assert stats["same_period"] == 10 and err.count("sample period") == 1, err


def test_regular_readings_count_nothing(daphnet_bundle, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 30)
    got, stats, err = stream_text(daphnet_bundle, csv_text(features, x, period), tmp_path)
    assert len(got) == 30 and stats["late"] == stats["same_period"] == stats["missing_periods"] == 0, err


def test_a_64_hz_export_stamped_in_whole_ms_steps_every_reading(daphnet_bundle, tmp_path):
    """Daphnet as shipped (15 and 16 ms apart): with its time column read, 165 of 7040 readings fell
    into the last one's 16 ms period and were skipped."""
    from train.data import dataset_path
    text = open(dataset_path("daphnet")).read()
    got, stats, err = stream_text(daphnet_bundle, text, tmp_path, "--engine", "numpy", "--time-col", "timestamp")
    assert len(got) == stats["readings"] == 7040 and stats["same_period"] == stats["missing_periods"] == 0, err[-600:]


def test_a_time_column_of_sample_numbers_is_no_clock_unless_named(daphnet_bundle, tmp_path):
    """A bundle without calendar inputs and a `time` column of sample numbers (0, 1, 2, ...): every
    reading is stepped, as before; only --time-col makes it a clock."""
    features, x = readings(daphnet_bundle, 50)
    got, stats, _ = stream_text(daphnet_bundle, timed_text(features, x, range(50)), tmp_path, "--engine", "numpy")
    assert len(got) == 50 and stats["clock_jumps"] == 0 and stats["same_period"] == 0


def test_a_reading_a_hair_early_belongs_to_its_period(calendar_bundle, tmp_path):
    """Hourly readings, every third stamped 10:59:59.9 for 11:00: serve's clock puts it in 11:00's
    period; stream floored it into 10:00's (a second reading there, then 11:00 missing)."""
    period = period_of(calendar_bundle)
    features, x = readings(calendar_bundle, 48)
    x = x[:, :len(features)]                          # (the build file also holds the derived inputs)
    start = (T0 // period + 1) * period              # on the hour: serve's calendar is its period's start
    times = [start + i * period - (0.1 if i % 3 == 2 else 0) for i in range(48)]
    text = timed_text(features, x, times)
    got, stats, _ = stream_text(calendar_bundle, text, tmp_path, "--engine", "numpy")
    rc, msgs, err = serve_stdin(calendar_bundle, text.encode())
    assert rc == 0 and len(got) == len(msgs) == 48 and stats["same_period"] == stats["missing_periods"] == 0, err[-800:]
    np.testing.assert_allclose(got, values(msgs), rtol=REL, atol=atol_of(calendar_bundle))


def test_readings_off_the_hour_take_their_own_time_in_serve(calendar_bundle, tmp_path):
    """A logger started at 09:17:23 stamps every hourly reading 17 min 23 s past the hour, and so
    did the data the model was trained on: serve computes the calendar inputs at those times, as
    stream and the Python API do (before, at the period's start: up to a period off); a missing
    hour keeps the readings' offset."""
    from runtime import load
    from runtime.forecaster import step_rows
    period = period_of(calendar_bundle)
    features, x = readings(calendar_bundle, 48)
    x = x[:, :len(features)]
    keep = [i for i in range(48) if i != 30]
    times = [(T0 // period) * period + 1043 + i * period for i in keep]
    text = timed_text(features, x[keep], times)
    got, stats, _ = stream_text(calendar_bundle, text, tmp_path, "--engine", "numpy")
    rc, msgs, err = serve_stdin(calendar_bundle, text.encode())
    assert rc == 0 and len(got) == len(msgs) == 47 and stats["missing_periods"] == 1, err[-800:]
    np.testing.assert_allclose(values(msgs), got, rtol=REL, atol=atol_of(calendar_bundle))
    fc = load(calendar_bundle, engine="numpy")
    rows = np.full((48, len(features)), np.nan)
    rows[keep] = x[keep]
    want = np.asarray(step_rows(fc, rows, [(T0 // period) * period + 1043 + i * period for i in range(48)]))
    np.testing.assert_allclose(got, want[keep], rtol=REL, atol=atol_of(calendar_bundle))


def test_a_restart_with_its_state_goes_on_in_time(daphnet_bundle, tmp_path):
    """A file streamed in two runs with --state gives the one run's forecasts: the gap between the
    runs is stepped, and a reading the first run already stepped is skipped (the timeline was not
    saved: the second run started without a last period)."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 60)
    times = [T0 + i * period for i in range(30)] + [T0 + (40 + i) * period for i in range(30)]
    whole, _, _ = stream_text(daphnet_bundle, timed_text(features, x, times), tmp_path)
    state = str(tmp_path / "state.npz")
    first, _, _ = stream_text(daphnet_bundle, timed_text(features, x[:30], times[:30]), tmp_path,
                              "--time-col", "time", "--state", state)
    again = timed_text(features, x[29:], times[29:])             # the first run's last reading again
    second, stats, _ = stream_text(daphnet_bundle, again, tmp_path, "--time-col", "time", "--state", state)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=REL, atol=atol_of(daphnet_bundle))
    assert stats["same_period"] == 1 and stats["missing_periods"] == 10
