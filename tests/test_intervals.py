"""Forecast intervals: split-conformal coverage, the running score, and adaptation to a level shift.

Runtime-only (numpy + an engine): runs in the torch-free device venvs too.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import runtime
from conftest import ROOT
from runtime.intervals import IntervalTracker

# Coverage tiers: the test split of the small Daphnet model has ~1,000 origins, so a realized
# coverage is within about +-2.5 points of its expectation by chance; the tiers allow twice that.
COVERAGE_TIER = {"0.8": (0.75, 0.85), "0.95": (0.92, 0.98)}


def test_conformal_intervals_cover_the_test_split_offline_and_through_the_runtime(daphnet_bundle):
    from bench.coverage import runtime_coverage
    iv = runtime.read_manifest(daphnet_bundle)["intervals"]
    assert iv["levels"] == [0.8, 0.95] and iv["calibration_points"] >= 500
    fixed = runtime_coverage(daphnet_bundle, "numpy", "fp32", adapt=False)
    adaptive = runtime_coverage(daphnet_bundle, "numpy", "fp32", adapt=True)
    for lv, (lo, hi) in COVERAGE_TIER.items():
        for k, c in enumerate(iv["test_coverage_offline"][lv]):
            assert lo <= c <= hi, (lv, k, c)
            assert abs(fixed[lv][k] - c) <= 0.01            # the runtime's fixed bounds are the offline ones
            assert lo <= adaptive[lv][k] <= hi


def test_bounds_shape_and_the_running_score_against_a_hand_count(daphnet_bundle):
    fc = runtime.load(daphnet_bundle, engine="numpy", intervals=True)
    j = fc.manifest["model"]["residual_input"]
    with np.load(os.path.join(daphnet_bundle, "golden.npz")) as g:
        r = g["inputs"][:120]
    forecasts = []
    for x in r:
        forecasts.append(fc.step(x))
        assert set(fc.bounds) == {0.8, 0.95}
        lo, hi = fc.bounds[0.8]
        assert lo.shape == hi.shape == forecasts[-1].shape and (lo <= forecasts[-1]).all() and (forecasts[-1] <= hi).all()
        assert (fc.bounds[0.95][0] <= lo).all() and (hi <= fc.bounds[0.95][1]).all()
    f = np.stack(forecasts)
    score = fc.stats["score"]
    for k in (1, 3, 6):                                  # the step-k forecast made at t meets r[t + k]
        err = np.abs(r[k:, j] - f[:-k, k - 1])
        pers = np.abs(r[k:, j] - r[:-k, j])
        assert score["scored"][k - 1] == len(err)
        assert score["mae"][k - 1] == pytest.approx(err.mean(), rel=1e-4)
        assert score["persistence_mae"][k - 1] == pytest.approx(pers.mean(), rel=1e-4)
    assert runtime.load(daphnet_bundle, engine="numpy").bounds == {}          # off: nothing kept


def _shifted(tracker_kwargs, shift=3.0, n=6000, seed=0):
    """Forecasts of 0 with N(0, 1) errors, then a level shift of `shift` std after 2,000 steps."""
    probs = np.linspace(0, 1, 201)
    from statistics import NormalDist
    q = np.array([NormalDist().inv_cdf(min(max(p, 1e-4), 1 - 1e-4)) for p in probs])
    manifest = {"intervals": {"levels": [0.8], "probs": list(probs), "error_quantiles": [list(q)]}}
    tr = IntervalTracker(manifest, 1, 0, **tracker_kwargs)
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(n) + np.where(np.arange(n) >= 2000, shift, 0.0)
    for t in range(n):
        tr.update(truth[t], np.zeros(1))
        if t == n - 2000:
            before = {k: v.copy() for k, v in tr._sum.items()}
    return (tr._sum["hit0.8"][0] - before["hit0.8"][0]) / (tr._sum["n"][0] - before["n"][0]), tr


def test_adaptation_keeps_coverage_after_a_level_shift():
    fixed, _ = _shifted({"adapt": False})
    adaptive, tr = _shifted({"adapt": True})
    assert fixed < 0.25                                 # fixed intervals miss after the shift
    assert 0.75 <= adaptive <= 0.85, adaptive           # ACI widens them back to nominal
    assert tr.score()["alpha"]["0.8"][0] < 0.2 - 0.05


def test_retrain_flag_when_worse_than_persistence():
    _, tr = _shifted({"adapt": True, "retrain_window": 500}, shift=3.0)
    assert tr.score()["retrain"]                       # a 0 forecast after a shift: persistence wins
    _, calm = _shifted({"adapt": True, "retrain_window": 500}, shift=0.0)
    assert not calm.score()["retrain"]


def test_stream_writes_the_bounds(daphnet_bundle, tmp_path):
    feats = [f["name"] for f in runtime.read_manifest(daphnet_bundle)["features"]]
    with np.load(os.path.join(daphnet_bundle, "golden.npz")) as g:
        rows = [",".join(feats)] + [",".join(map(str, x)) for x in g["inputs"][:5]]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    p = subprocess.run([sys.executable, "-m", "runtime", "stream", daphnet_bundle, "--input", str(tmp_path / "in.csv"),
                        "--intervals"], cwd=ROOT, capture_output=True, text=True, check=True)
    header = p.stdout.splitlines()[0].split(",")
    assert header[:2] == ["ankle_horiz_fwd+16ms", "ankle_horiz_fwd+32ms"] and "ankle_horiz_fwd+16ms_lo80" in header
    assert "ankle_horiz_fwd+96ms_hi95" in header and len(header) == 6 * 5
    vals = dict(zip(header, map(float, p.stdout.splitlines()[-1].split(","))))
    assert vals["ankle_horiz_fwd+16ms_lo95"] <= vals["ankle_horiz_fwd+16ms_lo80"] <= vals["ankle_horiz_fwd+16ms"] \
        <= vals["ankle_horiz_fwd+16ms_hi80"] <= vals["ankle_horiz_fwd+16ms_hi95"]
