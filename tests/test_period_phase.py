"""The device's periods centred on the readings' own phase, as training's grid is. A logger
writing on the hour with a few seconds of jitter (10:59:58, 12:00:03) had periods that began on
the hour: about a fifth of its readings fell into the period before their own, which `stream`
skipped and `serve` averaged, and as many periods were invented empty, while training called the
file regular (found by a helper probing about 250 sampling setups, 2026-12-07). Each test failed on
the code before."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_module
from runtime.service.clock import period_index
from train.data import prepare_series

T0 = 1717243200.0          # 2024-06-01 12:00:00 UTC
rng = np.random.default_rng(0)
N = 2000


def _iso(t, decimals):
    text = pd.to_datetime(np.round(np.asarray(t) * 1e6).astype("int64"), unit="us").strftime("%Y-%m-%d %H:%M:%S.%f")
    return text.str[:-7] if decimals == 0 else text.str[:-(6 - decimals)]


CASES = {   # the readings' true times and how they are written
    "hourly on the hour, +-7 s, whole seconds": (T0 + 3600 * np.arange(N) + rng.uniform(-7, 7, N), 0),
    "1 Hz on the second, 2 ms jitter, whole ms": (T0 + np.arange(N) + rng.normal(0, 0.002, N), 3),
    "hourly at 17 min past, +-20%, whole seconds": (T0 + 3600 * (np.arange(N) + 0.29 + rng.uniform(-0.2, 0.2, N)), 0),
    "10 min half past, +-30%, whole seconds": (T0 + 600 * (np.arange(N) + 0.5 + rng.uniform(-0.3, 0.3, N)), 0),
    "200 Hz at 4 ms into each period, whole ms": (T0 + 0.004 + np.arange(N) / 200, 3),
    "128 Hz from 0.85 of a period, whole ms": (T0 + (np.arange(N) + 0.85) / 128, 3),
    "1000 Hz, whole ms": (T0 + 0.0009 + np.arange(N) / 1000, 3),
}


def _written(t, decimals):
    return np.floor(np.asarray(t) * 10 ** decimals) / 10 ** decimals


@pytest.mark.parametrize("name", CASES)
def test_each_reading_has_its_own_period_on_the_device(name):
    t, decimals = CASES[name]
    s = prepare_series(pd.DataFrame({"time": _iso(_written(t, decimals), decimals), "v": np.sin(np.arange(N) / 50)}), "v")
    assert len(s.target) == N and s.segments == [(0, N)]
    periods = [period_index(x, s.period_s, s.phase_s) for x in _written(t, decimals)]
    assert np.all(np.diff(periods) == 1), np.unique(np.diff(periods), return_counts=True)


def test_stream_and_serve_step_every_reading_of_an_hourly_logger_with_jitter(tmp_path):
    t, _ = CASES["hourly on the hour, +-7 s, whole seconds"]
    src = tmp_path / "f.csv"
    pd.DataFrame({"time": _iso(np.round(t[:1500]), 0), "temp": 20 + np.sin(np.arange(1500) / 4).round(3)}).to_csv(src, index=False)
    ck = str(tmp_path / "m.pt")
    run_module("train", "--data", str(src), "--target", "temp", "--epochs", "1", "--hidden", "4", "--quiet", "--out", ck)
    run_module("export", ck, "--out", str(tmp_path / "b"), "--formats", "onnx")
    p = run_module("runtime", "stream", str(tmp_path / "b"), "--input", str(src), "--output", str(tmp_path / "o.csv"))
    stats = json.loads(p.stderr.strip().splitlines()[-1])
    assert stats["steps"] == 1500 and stats["same_period"] == stats["missing_periods"] == 0, p.stderr[-600:]
    from test_serve_edges import last_stats, serve_stdin
    rc, msgs, err = serve_stdin(tmp_path / "b", src.read_bytes())
    stats = last_stats(err)
    assert rc == 0 and stats["ticks"] == len(msgs) == 1500 and stats["missing_periods"] == 0, err[-800:]
    assert msgs[0]["time"] == "2024-06-01T12:00:00Z"           # each period named by its schedule's time


def test_the_phase_is_within_the_period_and_the_lattice_names_its_own_periods():
    """A phase a hair below 0 came back as the period itself (which the bundle check refuses); at
    1 kHz without a phase, the 1 ms early tolerance moved every reading into the next period."""
    from runtime.service.clock import period_time
    from train.grid import reading_phase
    assert reading_phase(np.array([3599.0] * 5 + [1.0] * 5), 3600.0) == 0.0
    for period in (0.001, 0.0005, 1 / 64, 1.0, 3600.0):
        assert all(period_index(period_time(p, period), period) == p for p in (1_700_000_000, 3_400_000_000_000))
