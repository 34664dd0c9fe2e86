"""Calendar inputs derived from each reading's time: one definition on both sides, through every engine.

Runs on the device side (no torch): the bundle is built beforehand by tests/conftest.py.
"""
import csv
import json
import math
import os
import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

import runtime
from runtime.bundle import BundleError
from runtime.derived import DerivedInputs, TimeError, golden_stream
from runtime.times import EARLIEST, LATEST, BundleClock
from runtime.engines import available_engines
from runtime.forecaster import step_rows
from tests.conftest import SAME, TIERS, reseal, run_module
from train import calendar

TIER_FP32 = TIERS["fp32"]  # the tiers live in runtime/bundle.py and tests/conftest.py
TIER_SAME = SAME


def test_train_and_runtime_compute_the_same_values():
    spec = calendar.section(["day", "week"], utc_offset_s=3600.0)
    rng = np.random.default_rng(0)
    walls = rng.uniform(1.5e9, 1.9e9, 500)
    table = calendar.values(spec, walls)
    d = DerivedInputs(spec)
    got = np.stack([d.values(w - 3600.0).copy() for w in walls])      # epoch seconds are UTC: shifted by +1 h
    assert d.names == ["time_of_day_sin", "time_of_day_cos", "day_of_week_sin", "day_of_week_cos"]
    assert np.max(np.abs(got - table)) <= TIER_SAME


def wall_seconds(t, utc_offset_s=0.0):
    """The wall clock of a time on a fixed-offset bundle, through the one rule (runtime/times.py)."""
    clock = BundleClock(utc_offset_s=utc_offset_s)
    return clock.wall(clock.epoch(t))


def test_every_time_form_gives_the_same_wall_clock():
    """On fixed-offset bundles (formats 3 and 4) every result is what the earlier rule gave."""
    naive = datetime(2024, 3, 5, 17, 30)
    want = (naive - datetime(1970, 1, 1)).total_seconds()
    aware = naive.replace(tzinfo=timezone(timedelta(hours=2)))        # 17:30 at +02:00 is 15:30 UTC
    for off in (0.0, 3600.0, -18000.0, 19800.0):
        assert wall_seconds(naive, off) == want                       # naive: on the bundle's clock
        assert wall_seconds("2024-03-05T17:30:00", off) == want
        assert wall_seconds("2024-03-05 17:30", off) == want
        assert wall_seconds(np.datetime64("2024-03-05T17:30"), off) == want
        assert wall_seconds(aware, off) == want - 7200 + off          # aware: UTC, shifted onto the clock
        assert wall_seconds("2024-03-05T17:30:00+02:00", off) == want - 7200 + off
        assert wall_seconds(want - off, off) == want                  # epoch seconds
        assert wall_seconds(str(want - off), off) == want             # a CSV cell
        assert wall_seconds("2024-03-04T24:00", off) == wall_seconds("2024-03-05T00:00", off)   # ISO 8601's end of day
        assert wall_seconds("45356.729167", off) == want and wall_seconds(45356.729167, off) == want   # serial days
        assert wall_seconds("2024-03-04 24:00:00+02:00", off) == wall_seconds("2024-03-05T00:00+02:00", off)
    for bad in ("yesterday", "", float("nan"), True, [1], "2024-03-04T24:30", "2024-13-04T24:00"):
        with pytest.raises(TimeError, match="time"):
            wall_seconds(bad)


def test_milliseconds_and_seconds_give_the_same_wall_clock():
    d = DerivedInputs(calendar.section(["day", "week"], utc_offset_s=3600.0))
    for s in (1700000000, 1700000000.5, 1769857200):
        a = d.values(s).copy()
        assert np.array_equal(d.values(s * 1000), a) and np.array_equal(d.values(str(s * 1000)), a)
        assert np.array_equal(d.values(np.int64(s * 1000)), a)


@pytest.mark.parametrize("bad", [10 ** 400, -10 ** 400, -1e12, 1e300, float("nan"), float("inf"), "1" * 400,
                                 "-1e12", "nan", "0001-01-01T00:00:00", "9999-12-31T23:59:59+14:00",
                                 datetime.min.replace(tzinfo=timezone(timedelta(hours=1))), np.datetime64("NaT"),
                                 np.datetime64(10 ** 15, "D"), None])
def test_implausible_times_are_one_line_time_errors(bad):
    for clock in (BundleClock(), BundleClock("Europe/Paris"), BundleClock(utc_offset_s=3600)):
        with pytest.raises(TimeError) as e:
            clock.epoch(bad)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 300 and msg.startswith("time ") and "expected" in msg
    assert BundleClock().epoch(EARLIEST) == EARLIEST and BundleClock().epoch(LATEST) == LATEST


def _paris_fall_back():
    """36 naive local times every 10 min, 2026-10-25 00:00 .. 04:50 Paris: 02:00-02:50 twice (CEST, then CET)."""
    start = datetime(2026, 10, 25)
    first = [start + timedelta(minutes=10 * i) for i in range(18)]              # 00:00 .. 02:50 (CEST)
    return first + [start + timedelta(hours=2, minutes=10 * i) for i in range(18)]   # 02:00 again .. 04:50


def test_a_dst_fold_resolves_by_arrival_order():
    clock, after, epochs = BundleClock("Europe/Paris"), None, []
    for t in _paris_fall_back():
        after = clock.epoch(t.isoformat(), after)
        epochs.append(after)
    assert len(epochs) == 36 and np.all(np.diff(epochs) == 600.0)              # 36 instants, 10 min apart
    assert epochs[0] == datetime(2026, 10, 24, 22, tzinfo=timezone.utc).timestamp()
    walls = [clock.wall(e) for e in epochs]
    assert walls[18] == walls[12] and walls[17] - walls[18] == 3000          # the wall clock repeats 02:00-02:50
    assert clock.epoch("2026-10-25T02:30:00") == clock.epoch("2026-10-25T00:30:00Z")     # no `after`: fold 0
    d = DerivedInputs(calendar.section(["day"], timezone="Europe/Paris"))
    got = np.stack([d.values(t.isoformat()).copy() for t in _paris_fall_back()])      # chained inside
    assert np.max(np.abs(got - calendar.values(calendar.section(["day"], timezone="Europe/Paris"), np.array(walls)))) <= TIER_SAME


def test_a_dst_gap_shifts_forward():
    clock = BundleClock("Europe/Paris")                          # 2026-03-29 02:00 CET -> 03:00 CEST
    assert clock.epoch("2026-03-29T02:30:00") == clock.epoch("2026-03-29T03:30:00")
    assert clock.epoch("2026-03-29T02:30:00") == datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc).timestamp()
    assert clock.wall(clock.epoch("2026-03-29T02:30:00")) % 86400 == 3.5 * 3600


def test_train_and_runtime_agree_across_dst():
    """The calendar values of a zone's series (train/calendar.py over its wall clock) equal what the
    device computes from each reading's epoch, naive time or aware time, across both DST changes."""
    spec = calendar.section(["day", "week"], timezone="Europe/Paris")
    clock = BundleClock("Europe/Paris")
    epochs = datetime(2026, 3, 27, tzinfo=timezone.utc).timestamp() + 1800.0 * np.arange(24 * 2 * 220)
    table = calendar.values(spec, clock.walls(epochs))
    d = DerivedInputs(spec)
    by_epoch = np.stack([d.values(float(e)).copy() for e in epochs])
    aware = np.stack([d.values(datetime.fromtimestamp(e, clock.zone).isoformat()).copy() for e in epochs[::7]])
    naive = np.stack([d.values(datetime.fromtimestamp(e, clock.zone).replace(tzinfo=None).isoformat()).copy()
                      for e in epochs[::7]])
    assert np.max(np.abs(by_epoch - table)) <= TIER_SAME
    assert np.max(np.abs(aware - table[::7])) <= TIER_SAME and np.max(np.abs(naive - table[::7])) <= TIER_SAME


def test_a_time_zone_bundle_is_format_5(calendar_bundle, tmp_path):
    """A bundle on a time zone loads as format 5; the same manifest claiming format 4 (which a
    runtime that predates zones would read on the wrong clock) is refused, as is an unknown zone."""
    b = tmp_path / "tz"
    shutil.copytree(calendar_bundle, b)
    m = json.load(open(b / "manifest.json"))
    del m["derived_inputs"]["utc_offset_s"]
    m["derived_inputs"]["timezone"] = "Europe/Paris"
    m["model"].pop("base", None)                  # a level model (an AR base is format 7)
    m["format_version"] = 5
    reseal(str(b), m)
    fc = runtime.load(str(b), engine="numpy")
    assert fc.derived.clock.timezone == "Europe/Paris"
    for field, value, message in (("format_version", 4, "'format_version' is 4; .* is format 5"),
                                  ("timezone", "Mars/Olympus_Mons", "time zone 'Mars/Olympus_Mons' is unknown")):
        bad = json.loads(json.dumps(m))
        (bad if field == "format_version" else bad["derived_inputs"])[field] = value
        reseal(str(b), bad)
        with pytest.raises(BundleError, match=message):
            runtime.load(str(b), engine="numpy")


def test_the_bundle_keeps_raw_features_apart_from_derived_inputs(calendar_bundle):
    fc = runtime.load(calendar_bundle, engine="numpy")
    m = fc.manifest
    assert m["format_version"] >= 3                # 3 added derived inputs
    assert fc.features == ["temp", "load"]
    assert fc.derived.names == [d["name"] for d in m["derived_inputs"]["inputs"]]
    assert len(fc.derived.names) == 4 and m["model"]["input_size"] == 6


def test_step_without_time_is_a_clear_error_and_changes_nothing(calendar_bundle):
    fc = runtime.load(calendar_bundle, engine="numpy")
    before = fc.state
    with pytest.raises(ValueError, match=r"time_of_day_sin.*step\(reading, time=t\)"):
        fc.step([15.0, 100.0])
    with pytest.raises(ValueError, match="not an ISO 8601"):
        fc.step([15.0, 100.0], time="half past four")
    assert np.array_equal(fc.state, before) and fc.stats["steps"] == 0


def test_the_time_changes_the_forecast(calendar_bundle):
    fc = runtime.load(calendar_bundle, engine="numpy", deadband=False)     # the graph's own output
    a = fc.step([15.0, 100.0], time="2024-02-01T03:00:00").copy()
    fc.reset()
    b = fc.step([15.0, 100.0], time="2024-02-01T15:00:00").copy()
    fc.reset()
    c = fc.step([15.0, 100.0], time=datetime(2024, 2, 1, 3, 0))
    assert not np.allclose(a, b) and np.array_equal(a, c)


@pytest.mark.parametrize("engine", [e for e in ("numpy", "onnxruntime", "litert") if e in available_engines()])
def test_golden_forecasts_through_every_engine(calendar_bundle, engine):
    """Each engine, fed the raw readings and their times, gives the export-time golden forecasts
    (the graph's, without the deadband)."""
    fc = runtime.load(calendar_bundle, engine=engine, deadband=False)
    raw, times = golden_stream(os.path.join(calendar_bundle, "golden.npz"))
    assert raw.shape[1] == 2 and times is not None
    with np.load(os.path.join(calendar_bundle, "golden.npz")) as g:
        want = g["forecast/" + fc.artifact["file"]]
    scale = fc.manifest["scaler"]["targets"]["scale"][0]
    assert np.max(np.abs(step_rows(fc, raw, times) - want)) / scale <= TIER_FP32


def test_batched_streams_share_one_time(calendar_bundle):
    raw, times = golden_stream(os.path.join(calendar_bundle, "golden.npz"))
    one = runtime.load(calendar_bundle, engine="numpy")
    many = runtime.load(calendar_bundle, engine="numpy", streams=3)
    for r, t in zip(raw[:50], times[:50]):
        y1 = one.step(r, time=float(t))
        yb = many.step(np.stack([r, r, r]), time=float(t))
    assert np.allclose(yb, y1[None], atol=1e-5)


def test_a_bundle_without_derived_inputs_ignores_time(daphnet_bundle):
    fc = runtime.load(daphnet_bundle, engine="numpy")
    raw, times = golden_stream(os.path.join(daphnet_bundle, "golden.npz"))
    assert fc.derived is None and times is None
    a = fc.step(raw[0]).copy()
    fc.reset()
    assert np.array_equal(fc.step(raw[0], time="not even a time"), a)


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_stream_reads_the_time_column(calendar_bundle, tmp_path):
    raw, times = golden_stream(os.path.join(calendar_bundle, "golden.npz"))
    iso = [datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") for t in times]
    _csv(tmp_path / "in.csv", ["time", "temp", "load"], [[s, *map(repr, r.tolist())] for s, r in zip(iso, raw)])
    out = tmp_path / "out.csv"
    run_module("runtime", "stream", calendar_bundle, "--engine", "numpy", "--input", str(tmp_path / "in.csv"),
               "--output", str(out))
    got = np.loadtxt(out, delimiter=",", skiprows=1, usecols=range(1, 7))
    want = step_rows(runtime.load(calendar_bundle, engine="numpy"), raw, times)
    assert np.max(np.abs(got - want)) <= 1e-3 * max(1.0, float(np.abs(want).max()))
    _csv(tmp_path / "notime.csv", ["temp", "load"], raw[:3].tolist())
    p = run_module("runtime", "stream", calendar_bundle, "--input", str(tmp_path / "notime.csv"), "--output",
                   str(tmp_path / "x.csv"), check=False)
    assert p.returncode == 2 and "no time column" in p.stderr and "--time-col" in p.stderr


def test_stream_skips_a_line_whose_time_does_not_parse(calendar_bundle, tmp_path):
    raw, _ = golden_stream(os.path.join(calendar_bundle, "golden.npz"))
    rows = [["2024-02-01T00:00:00", 15, 100], ["soon", 15, 100], ["2024-02-01T01:00:00", 15, 101]]
    _csv(tmp_path / "in.csv", ["time", "temp", "load"], rows)
    p = run_module("runtime", "stream", calendar_bundle, "--input", str(tmp_path / "in.csv"), "--output",
                   str(tmp_path / "out.csv"))
    assert "line 3" in p.stderr and "soon" in p.stderr
    assert len(open(tmp_path / "out.csv").read().splitlines()) == 3        # header + the two good lines
    assert math.isfinite(float(open(tmp_path / "out.csv").read().splitlines()[-1].split(",")[-1]))
