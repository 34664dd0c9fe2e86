"""Forecast intervals: split-conformal coverage, the running score, and adaptation to a level shift.

Runtime-only (numpy + an engine): runs in the torch-free device venvs too.
"""
import csv
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
            before = tr.score()
    after = tr.score()                                   # hits = coverage x scored, +1 step, 80%
    hits = [s["coverage"]["0.8"][0] * s["scored"][0] for s in (before, after)]
    return (hits[1] - hits[0]) / (after["scored"][0] - before["scored"][0]), tr


def test_adaptation_keeps_coverage_after_a_level_shift():
    # A 2 std shift: with alpha in [0, 1] an interval is at most the quantile grid's range (+-3.7
    # std), which covers 98% of the shifted truths. (After a 3 std shift 24% lie beyond it: no
    # interval the grid gives reaches 80%, and only an alpha running off below 0 looked as if it did.)
    fixed, _ = _shifted({"adapt": False}, shift=2.0)
    adaptive, tr = _shifted({"adapt": True}, shift=2.0)
    assert fixed < 0.3                                  # fixed intervals miss after the shift
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
    assert header[:2] == ["ankle_horiz_fwd+15.625ms", "ankle_horiz_fwd+31.25ms"] and "ankle_horiz_fwd+15.625ms_lo80" in header
    assert "ankle_horiz_fwd+93.75ms_hi95" in header and len(header) == 6 * 5
    vals = dict(zip(header, map(float, p.stdout.splitlines()[-1].split(","))))
    assert vals["ankle_horiz_fwd+15.625ms_lo95"] <= vals["ankle_horiz_fwd+15.625ms_lo80"] <= vals["ankle_horiz_fwd+15.625ms"] \
        <= vals["ankle_horiz_fwd+15.625ms_hi80"] <= vals["ankle_horiz_fwd+15.625ms_hi95"]


# -- honest intervals (issue 24, cases 20-22) -------------------------------------------------
def _calendar_rows(bundle):
    """The calendar bundle's real training series: (times as ISO strings, readings [T, 2] of temp, load)."""
    with open(os.path.join(os.path.dirname(bundle), "calendar.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    feats = [f["name"] for f in runtime.read_manifest(bundle)["features"]]
    return [r["time"] for r in rows], np.array([[float(r[c]) for c in feats] for r in rows])


def _run(bundle, times, readings, **kw):
    """Step a whole stream with intervals on: (the forecaster, the +1 80% width at each step, alpha80 low)."""
    fc = runtime.load(bundle, engine="numpy", intervals=True, **kw)
    widths, lowest = [], np.inf
    for t, r in zip(times, readings):
        fc.step(r, time=t)
        lo, hi = fc.bounds[0.8]
        widths.append(float(hi[0] - lo[0]))
        lowest = min(lowest, float(fc.tracker.alpha[0.8].min()))
    return fc, np.array(widths), lowest


def test_a_noisy_stretch_leaves_alpha_in_0_1_and_the_width_recovers_soon(calendar_bundle):
    """Case 20: 300 hours of a load far off (12 std, out of range but a reading) drove the adapted
    miscoverage below 0; the 80% interval then stayed at its widest long after the noise."""
    times, clean = _calendar_rows(calendar_bundle)
    noisy = clean.copy()
    start, end, j = 300, 600, 1
    noisy[start:end, j] += 300.0 * np.where(np.arange(end - start) % 2, 1.0, -1.0)
    _, normal, _ = _run(calendar_bundle, times, clean)
    fc, width, lowest = _run(calendar_bundle, times, noisy)
    alphas = np.stack([fc.tracker.alpha[lv] for lv in fc.tracker.levels])
    assert 0.0 <= lowest and ((0.0 <= alphas) & (alphas <= 1.0)).all(), lowest
    assert width[end - 1] > 2.0 * normal[end - 1]                 # widest at the end of the noise
    wide = np.nonzero(width[end:] > 1.25 * normal[end:])[0]
    recovered = int(wide.max()) + 1 if len(wide) else 0          # steps after the noise until it stays near normal
    print(f"\n+1 80% width: {width[end - 1] / normal[end - 1]:.1f}x normal at the end of the noise, "
          f"within 1.25x from {recovered} steps after it; lowest alpha80 {lowest:.3f}")
    assert recovered <= 400, recovered


def test_a_rejected_truth_is_never_scored(calendar_bundle):
    """Case 21: -9999 (beyond the reject band) and 1e30 are no truths: the MAE stays that of the clean stream."""
    times, clean = _calendar_rows(calendar_bundle)
    times, clean = times[:600], clean[:600]
    dirty = clean.copy()
    dirty[[100, 101, 250, 400], 1] = -9999.0
    dirty[500, 1] = 1e30
    kw = {"reject_sigmas": 100.0}                         # -9999 is 411 std below this load's mean
    ref, _, _ = _run(calendar_bundle, times, clean, **kw)
    fc, _, _ = _run(calendar_bundle, times, dirty, **kw)
    assert fc.stats["rejected"] == 5 and ref.stats["rejected"] == 0
    got, want = fc.stats["score"], ref.stats["score"]
    print(f"\n+1 MAE clean {want['mae'][0]:.3f}, with the sentinels {got['mae'][0]:.3f}")
    for k in range(6):
        assert got["scored"][k] < want["scored"][k]
        assert got["mae"][k] == pytest.approx(want["mae"][k], rel=0.1), (k, got["mae"][k], want["mae"][k])
        assert got["persistence_mae"][k] == pytest.approx(want["persistence_mae"][k], rel=0.1)
    two = runtime.load(calendar_bundle, engine="numpy", intervals=True, streams=2, **kw)
    for t, c, d in zip(times, clean, dirty):                       # one honest stream beside one sentinel stream
        two.step(np.stack([c, d]), time=t)
    assert two.stats["score"]["mae"][0] == pytest.approx(want["mae"][0], rel=0.1)


def _flat(score: dict) -> dict:
    """The score's numbers, one key each (pytest.approx compares no nested dicts)."""
    out = {}
    for key, v in score.items():
        for name, vals in (v.items() if isinstance(v, dict) else [("", v)]):
            for i, x in enumerate(vals if isinstance(vals, list) else [vals]):
                out[f"{key}/{name}/{i}"] = float(x)
    return out


def _stepped(fc, readings, times):
    for r, t in zip(readings, times):
        fc.step(r, time=t)
    return fc


def test_the_tracker_survives_a_restart_and_old_state_files_still_load(calendar_bundle, tmp_path):
    """Case 22: alpha, the last forecasts' bounds and the score are saved with the state."""
    times, rows = _calendar_rows(calendar_bundle)
    times, rows = times[:400], rows[:400].copy()
    rows[150:200, 1] += 80.0                                       # a shift, so that alpha moves
    load = lambda **kw: runtime.load(calendar_bundle, engine="numpy", **kw)   # noqa: E731
    whole = _stepped(load(intervals=True), rows, times)
    first = _stepped(load(intervals=True), rows[:250], times[:250])
    path = str(tmp_path / "state.npz")
    first.save_state(path, {"nodes": {"a": 0}})
    again = load(intervals=True)
    assert again.load_state(path) == {"nodes": {"a": 0}}
    assert all(np.array_equal(again.bounds[lv][i], first.bounds[lv][i]) for lv in (0.8, 0.95) for i in (0, 1))
    _stepped(again, rows[250:], times[250:])
    assert _flat(again.stats["score"]) == pytest.approx(_flat(whole.stats["score"]), rel=1e-12, nan_ok=True)
    assert again.stats["score"]["alpha"]["0.8"] != [0.2] * 6 and again.stats["score"]["scored"][0] == 399
    assert all(np.array_equal(again.bounds[lv][i], whole.bounds[lv][i]) for lv in (0.8, 0.95) for i in (0, 1))
    load().load_state(path)                                        # no intervals here: the tracker is ignored
    plain = load()
    plain.save_state(path)
    load(intervals=True).load_state(path)                          # none in the file: a fresh tracker
    from runtime.state import STATE_VERSION
    assert int(np.load(path)["state_version"]) == STATE_VERSION


def test_a_state_file_of_the_previous_format_loads_with_a_fresh_tracker(calendar_bundle, tmp_path):
    times, rows = _calendar_rows(calendar_bundle)
    fc = _stepped(runtime.load(calendar_bundle, engine="numpy"), rows[:50], times[:50])
    old = tmp_path / "old.npz"                                     # what save_state wrote before state_version
    np.savez(old, state=fc.state, last=np.zeros((1, 2), np.float32),
             bundle_id=np.str_(fc.manifest["bundle_id"]), meta=np.str_('{"open": 7}'))
    new = runtime.load(calendar_bundle, engine="numpy", intervals=True)
    assert new.load_state(str(old)) == {"open": 7} and np.array_equal(new.state, fc.state)
    assert new.stats["score"]["scored"] == [0] * 6 and new.bounds == {}


def test_a_bad_or_newer_tracker_state_is_refused_in_one_line_and_changes_nothing(calendar_bundle, tmp_path):
    times, rows = _calendar_rows(calendar_bundle)
    fc = _stepped(runtime.load(calendar_bundle, engine="numpy", intervals=True), rows[:50], times[:50])
    fc.save_state(str(tmp_path / "good.npz"))
    with np.load(tmp_path / "good.npz") as z:
        arrays = dict(z)
    for name, change in (("alpha", {"iv_alpha": np.full_like(arrays["iv_alpha"], np.nan)}),
                         ("shape", {"iv_lo": arrays["iv_lo"][:, :2]}), ("newer", {"state_version": np.int64(99)})):
        np.savez(tmp_path / f"{name}.npz", **{**arrays, **change})
        other = runtime.load(calendar_bundle, engine="numpy", intervals=True)
        with pytest.raises(ValueError, match=f"{name}.npz"):
            other.load_state(str(tmp_path / f"{name}.npz"))
        assert not other.state.any() and other.stats["score"]["scored"] == [0] * 6


def test_a_stream_handed_to_a_new_sensor_starts_its_intervals_afresh(daphnet_bundle):
    """serve gives a freed stream to another node: that stream's adapted rates and pending
    forecasts go with its state (they belonged to the old sensor), the other stream's stay."""
    fc = runtime.load(daphnet_bundle, engine="numpy", streams=2, intervals=True)
    with np.load(str(daphnet_bundle) + ".build.npz") as z:
        x = z["inputs"][:200].astype(np.float32)
    for row in x:
        fc.step(np.stack([row, row * 3.0]))            # stream 1 sees readings its model never saw: misses
    alpha = {lv: a.copy() for lv, a in fc.tracker.alpha.items()}
    assert any((a[1] != 1.0 - lv).any() for lv, a in alpha.items())
    fc.reset(stream=1)
    for lv, a in fc.tracker.alpha.items():
        np.testing.assert_array_equal(a[1], 1.0 - lv)
        np.testing.assert_array_equal(a[0], alpha[lv][0])
    assert np.isnan(fc.tracker.pending[:, 1]).all() and not np.isnan(fc.tracker.pending[:, 0]).all()
