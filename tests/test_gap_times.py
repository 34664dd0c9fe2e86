"""A logger that pauses: a long gap splits the series, and the rows after it keep their real times.
Training computed every row's time as start + k periods, so after a 3-day gap the time-of-day and
day-of-week inputs were off by the gap (the device computes them from the real time), and so were
the golden readings' and the quantizer's times."""
import json
import os

import numpy as np
import pandas as pd

from conftest import calendar_frame, run_module
from export.buildfile import device_rows
from runtime.derived import DerivedInputs
from runtime.times import BundleClock
from train import calendar
from train.data import prepare_series
from train.many import prepare_many

GAP_H = 78          # the logger is off 3 days 6 hours


def paused(df, at: int, hours: int = GAP_H):
    """`df` with every row from `at` on moved `hours` later."""
    t = pd.to_datetime(df["time"])
    t = t.where(np.arange(len(t)) < at, t + pd.Timedelta(hours=hours))
    return df.assign(time=t.dt.strftime("%Y-%m-%dT%H:%M:%S"))


def real_calendar(series, times):
    """The calendar inputs the device computes from each row's real time (epoch seconds, UTC)."""
    d = DerivedInputs(series.derived)
    return np.stack([d.values(float(t)).copy() for t in times])


def epochs(df):
    return ((pd.to_datetime(df["time"]) - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy()


def test_rows_after_a_long_gap_keep_their_real_calendar():
    df = paused(calendar_frame(days=40), 500)
    s = calendar.add_calendar(prepare_series(df, "load"))
    assert len(s.segments) == 2 and s.segments[1][0] == 500
    n = len(s.features)
    got = s.inputs[:, n:]
    np.testing.assert_allclose(got, real_calendar(s, epochs(df)), atol=1e-9)


def test_each_series_of_many_keeps_its_real_times():
    a, b = calendar_frame(days=30), paused(calendar_frame(days=30, seed=1), 300, hours=GAP_H + 24 * 7)
    b = b.assign(time=(pd.to_datetime(b["time"]) + pd.Timedelta(days=3)).dt.strftime("%Y-%m-%dT%H:%M:%S"))
    s = prepare_many(pd.concat([a.assign(node="a"), b.assign(node="b")]), "node", "load")
    want = np.concatenate([epochs(a), epochs(b)])
    np.testing.assert_allclose(s.wall_times(), want, atol=1e-6)


def test_export_and_quantize_see_the_real_times_after_a_gap(tmp_path):
    """Trained with the gap before its validation and test splits: the build file's device rows
    (what quantize calibrates and measures drift on) and the golden readings carry the real times."""
    df = paused(calendar_frame(days=60), 900)
    src, ck, bundle = tmp_path / "paused.csv", tmp_path / "m.pt", tmp_path / "b"
    df.to_csv(src, index=False)
    run_module("train", "--data", str(src), "--target", "load", "--hidden", "4", "--epochs", "1", "--quiet",
               "--out", str(ck))
    run_module("export", str(ck), "--out", str(bundle))
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    _, times = device_rows(str(bundle), m, 0, len(df))
    np.testing.assert_allclose(times, epochs(df), atol=1e-6)
    with np.load(os.path.join(bundle, "golden.npz")) as g:
        golden = g["times"]
    assert np.isin(np.round(golden), np.round(epochs(df)[900:])).all()
    assert BundleClock().wall(float(golden[0])) == float(golden[0])


def test_the_quantizers_rows_of_many_series_carry_each_series_times(tmp_path):
    """Two sensors logging different months, the second with a gap: the build file's device rows
    (quantize's calibration and drift streams) gave every series the first one's clock."""
    a = calendar_frame(days=40)
    b = paused(calendar_frame(days=40, seed=1), 400)
    b = b.assign(time=(pd.to_datetime(b["time"]) + pd.Timedelta(days=50, hours=5)).dt.strftime("%Y-%m-%dT%H:%M:%S"))
    src, ck, bundle = tmp_path / "two.csv", tmp_path / "m.pt", tmp_path / "b"
    pd.concat([a.assign(node="a"), b.assign(node="b")]).to_csv(src, index=False)
    run_module("train", "--data", str(src), "--target", "load", "--series-col", "node", "--hidden", "4",
               "--epochs", "1", "--quiet", "--out", str(ck))
    run_module("export", str(ck), "--out", str(bundle))
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    _, times = device_rows(str(bundle), m, 0, len(a) + len(b))
    np.testing.assert_allclose(times, np.concatenate([epochs(a), epochs(b)]), atol=1e-6)
