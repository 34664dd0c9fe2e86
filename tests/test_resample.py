"""Readings at irregular times (a logger writing on change, a Home Assistant history export) put on a
regular grid by `train --resample`: the mean of each period's readings, as serve's clock aggregates
them, a period without one holding the last value. Before, such a file trained on a grid of its
median interval (558.198 s, 3088 of 4071 intervals irregular, each row one step) or, with several
entities, was refused ("expected one sample period for every series"). Each test failed on the
code before."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_module
from test_serve_edges import last_stats, serve_stdin
from train.data import DataError, load_series, prepare_series
from runtime.service.clock import MAX_GAP_TICKS

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def _events(entity, values, minutes):
    t = T0 + pd.to_timedelta(np.asarray(minutes, float), unit="min")
    return pd.DataFrame({"entity_id": entity, "state": values,
                         "last_changed": t.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"})


def _history(days=20, seed=0):
    """Three entities written on change, as Home Assistant records them, with `unavailable` states."""
    rng = np.random.default_rng(seed)
    minutes = np.arange(0, 60 * 24 * days)
    hours = minutes / 60
    parts = []
    for k, (entity, level, amp, digits) in enumerate((("sensor.living_temperature", 20, 2, 1),
                                                     ("sensor.living_humidity", 45, 5, 0),
                                                     ("sensor.outdoor_temperature", 8, 6, 1))):
        v = np.round(level + amp * np.sin(2 * np.pi * (hours - 8 - k) / 24) + np.cumsum(rng.normal(0, .01, len(minutes))),
                     digits)
        changed = np.flatnonzero(np.r_[True, np.diff(v) != 0])
        states = np.where(rng.random(len(changed)) < 0.005, "unavailable", v[changed].astype(str))
        parts.append(_events(entity, states, changed + rng.uniform(0, 0.98, len(changed))))
    return pd.concat(parts).sort_values("last_changed").reset_index(drop=True)


def test_each_period_is_the_mean_of_its_readings_and_an_empty_one_holds():
    df = _events("s", [20.0, 20.2, 20.4, 21.0], [3, 7, 45, 46])
    s = prepare_series(df.drop(columns="entity_id"), "state", resample_s=600.0)
    assert s.period_s == 600.0 and s.segments == [(0, 5)]
    np.testing.assert_allclose(s.target, [20.1, 20.1, 20.1, 20.1, 20.7])     # the device holds the row it stepped
    assert s.report.held_cells == 3 and s.report.resample_s == 600.0
    # each row's time: its period's start plus the readings' mean offset into their periods (serve's calendar time)
    offset = np.mean([180, 420, 300, 360])
    assert s.start_s == (T0 - pd.Timestamp(0, tz="UTC")).total_seconds() + offset


def test_periods_are_binned_on_utc_as_the_device_bins_them():
    """Naive local times on a clock 2 h ahead of UTC, resampled to days: training's days ran from
    local midnight, the device's from UTC midnight (the 00:30 reading was in another day)."""
    from runtime.times import BundleClock
    t = pd.Timestamp("2024-03-01 00:30") + pd.to_timedelta(3 * np.arange(80), unit="h")
    df = pd.DataFrame({"time": t.strftime("%Y-%m-%d %H:%M"), "v": np.arange(80.0)})
    s = prepare_series(df, "v", resample_s=86400.0, clock=BundleClock(utc_offset_s=7200.0))
    assert s.target[0] == 0.0 and s.target[1] == np.mean(np.arange(1, 9))    # 22:30 UTC alone, then a UTC day


def test_a_silence_longer_than_the_device_holds_splits_the_series():
    """The device holds a stream's value through MAX_GAP_TICKS periods; longer, its clock moves on."""
    minutes = [0, 5] + [10 * (MAX_GAP_TICKS + 2) + m for m in (0, 5, 10)]
    s = prepare_series(_events("s", [1.0, 2.0, 3.0, 4.0, 5.0], minutes).drop(columns="entity_id"), "state",
                       resample_s=600.0)
    assert len(s.segments) == 2 and s.report.held_cells == 0


def test_a_home_assistant_history_of_three_entities_trains_as_three_series():
    df = _history()
    with pytest.raises(DataError, match="--resample"):
        _load(df, None)
    s = _load(df, 600.0)
    assert s.period_s == 600.0 and [p.id for p in s.parts] == sorted(df.entity_id.unique())
    for p in s.parts:                                                   # every 10 minutes of its span, none split
        t = pd.to_datetime(df.last_changed[df.entity_id == p.id]).dt.floor("10min")
        assert p.stop - p.start == (t.max() - t.min()) // pd.Timedelta("10min") + 1 > 20 * 144 - 6
    assert len(s.segments) == 3
    assert s.report.non_numeric_cells == {"state": int((df.state == "unavailable").sum())}


def test_an_irregular_file_is_told_of_resample():
    df = _history(days=10)
    one = df[df.entity_id == "sensor.living_temperature"].drop(columns="entity_id")
    s = prepare_series(one, "state")
    assert any("--resample 10min" in line for line in s.report.lines()), s.report.lines()


def _load(df, resample_s):
    import os
    import tempfile
    path = os.path.join(tempfile.mkdtemp(), "history.csv")
    df.to_csv(path, index=False)
    return load_series(path, "state", series_col="entity_id", resample_s=resample_s)


def test_resample_is_one_line_when_wrong(tmp_path):
    path = tmp_path / "h.csv"
    _history(days=2).to_csv(path, index=False)
    for bad in ("0", "-5min", "10 parsecs", "nan"):
        p = run_module("train", "--data", str(path), "--target", "state", "--series-col", "entity_id",
                       "--resample", bad, "--out", str(tmp_path / "m.pt"), check=False)
        assert p.returncode != 0 and "--resample" in p.stderr and "Traceback" not in p.stderr, p.stderr[-400:]


def test_pandas_month_and_year_aliases_are_no_minutes_or_milliseconds():
    """`1M` (pandas: a month) read as 1 minute, `1MS` as 1 millisecond; a week's `1W` was no period."""
    from train.resample import parse_period
    for text in ("1M", "1MS", "3ME", "1Q", "1YS", "1A"):
        with pytest.raises(ValueError, match="calendar month, quarter or year"):
            parse_period(text)
    assert (parse_period("1W"), parse_period("5m"), parse_period("1min"), parse_period("2ms")) == (604800.0, 300.0, 60.0, 0.002)


def test_serve_ticks_a_resampled_bundle_on_the_same_raw_events(tmp_path):
    """Trained with --resample 10min on one entity's events; `serve` over the same events: one tick a
    period, the mean of its readings, as training made them."""
    df = _history(days=14)
    one = df[df.entity_id == "sensor.living_temperature"].drop(columns="entity_id")
    one = one[one.state != "unavailable"]
    src = tmp_path / "events.csv"
    one.rename(columns={"last_changed": "time", "state": "temp"})[["time", "temp"]].to_csv(src, index=False)
    ck = str(tmp_path / "m.pt")
    run_module("train", "--data", str(src), "--target", "temp", "--resample", "10min", "--epochs", "1",
               "--hidden", "4", "--quiet", "--out", ck)
    run_module("export", ck, "--out", str(tmp_path / "b"), "--formats", "onnx")
    m = json.load(open(tmp_path / "b" / "manifest.json"))
    assert m["sample_period_s"] == 600.0 and m["source"]["data_spec"]["resample_s"] == 600.0
    rc, msgs, err = serve_stdin(tmp_path / "b", src.read_bytes())
    stats = last_stats(err)
    periods = pd.to_datetime(one.last_changed).dt.floor("10min")
    span = (periods.iloc[-1] - periods.iloc[0]) // pd.Timedelta("10min") + 1
    assert rc == 0 and stats["readings"] == len(one) and stats["late"] == 0, err[-800:]
    assert stats["ticks"] == span and len(msgs) == periods.nunique(), err[-800:]    # a forecast where readings came
