"""Many series, each with the residual's base that forecasts it best (format 10): chosen on each
series' own validation split in training, stored as `series.<id>.base`, and computed by the device
per stream, one ring of the longest p (runtime/residual.py holds the definition). Tiny seeded
models and small synthetic series; the CLI end to end is test_many_series'
test_train_export_and_stream_each_series_in_its_own_scale."""
import copy
import json
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from conftest import reseal, run_module
from runtime.bundle import BundleError, format_version_for, read_manifest
from runtime.residual import base_of

TOL = dict(rtol=0, atol=1e-4)        # float32 steps against a float64 reference, normalized units


def _series(name: str, period: int, n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Hourly readings with a cycle of `period` hours whose amplitude drifts (an AR on the last
    day follows it), or for period 0 a random walk (best forecast by its current reading)."""
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    amp = 5 + 2 * np.sin(2 * np.pi * k / 300)
    value = (10 + amp * np.sin(2 * np.pi * k / period) + 0.3 * rng.standard_normal(n) if period
             else 10 + np.cumsum(rng.standard_normal(n)))
    return pd.DataFrame({"time": pd.date_range("2024-01-01", periods=n, freq="h"), "node": name, "value": value})


def _pair(path) -> str:
    pd.concat([_series("daily", 24), _series("walk", 0, seed=1)], ignore_index=True).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from train.pipeline import DataSpec, load_prepared
    csv = _pair(tmp_path_factory.mktemp("pair") / "pair.csv")
    return csv, load_prepared(DataSpec(csv, "value", calendar="none", series_col="node"))


def test_each_series_gets_its_own_base_where_it_forecasts_its_validation_better(pair):
    from train.base import BASE_MARGIN, base_step_mae, choose_base, choose_series_bases, fit_ar, model_base
    from train.model import RecurrentConfig, RecurrentModel
    _, data = pair
    j = data.target_feature
    pooled = choose_base(data, j)
    assert pooled                                       # the cycle: an AR beats the level
    own = dict(choose_series_bases(data, j, pooled))
    assert set(own) == {"daily", "walk"}                # the pooled AR serves neither the cycle nor the walk well
    for p in data.series.parts:
        sub = data.part(p)
        assert sub.series_id == p.id
        mine = float(np.mean(base_step_mae(sub, j, own[p.id])))
        assert mine < (1 - BASE_MARGIN) * float(np.mean(base_step_mae(sub, j, pooled)))
        assert own[p.id] in [fit_ar(sub, j, q) for q in (2, 4, 8, 16, 24)] + [((1.0,) * 6, (0.0,) * 6)]
    cfg = RecurrentConfig(input_size=data.x.shape[1], hidden_size=4, horizon=6, residual_input=j, base=pooled,
                          series_base=tuple(own.items()))
    model = RecurrentModel(cfg)
    whole = model_base(model, data)                     # the training rows: each series' rows with its own base
    for p in data.series.parts:
        sub = data.part(p)
        a, b = sub.series.segments[0]
        want = base_of(sub.x[a:b, j], own[p.id])
        np.testing.assert_allclose(whole[p.start + a:p.start + b], want, **TOL)
        np.testing.assert_allclose(model_base(model, sub)[a:b], want, **TOL)
    assert cfg.base_of("never-seen") == cfg.base_of(None) == pooled
    with pytest.raises(ValueError, match="base needs"):
        RecurrentConfig(input_size=2, horizon=2, residual_input=0, base=((1.0, 1.0), (0.0, 0.0)),
                        series_base=(("a", ((1.0,), (0.0,))),))
    with pytest.raises(ValueError, match="a series' own base needs the model's"):
        RecurrentConfig(input_size=2, horizon=2, residual_input=0, series_base=(("a", ((1.0, 1.0), (0.0, 0.0))),))


def test_one_series_a_level_model_or_the_default_has_no_series_base(pair):
    from train.base import base_name, choose_base, choose_series_bases, level_ar, series_bases_for
    _, data = pair
    j = data.target_feature
    assert choose_series_bases(data, j, ()) == ()
    assert choose_series_bases(data.part(data.series.parts[0]), j, level_ar(6)) == ()
    pooled = choose_base(data, j)
    assert series_bases_for(data, j, pooled, "pooled") == ()            # the default (train --series-base)
    assert series_bases_for(data, j, pooled, "own") == choose_series_bases(data, j, pooled) != ()
    with pytest.raises(ValueError, match="unknown series base 'mine'; expected one of pooled, own"):
        series_bases_for(data, j, pooled, "mine")
    assert base_name(level_ar(6)) == "level" and base_name(()) == "level" and base_name(pooled) == "AR(24)"


def _with_series_bases(src, dst, own: dict) -> tuple:
    """A copy of the AR-base bundle `src` with a `series` section: each id in `own` with the pooled
    scaler and its own base (None: the model's), format 10."""
    from conftest import copy_bundle
    bundle = copy_bundle(src, dst)
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    sc = {part: {k: m["scaler"][part][k] for k in ("offset", "scale")} for part in ("inputs", "targets")}
    m["series"] = {sid: {**copy.deepcopy(sc), **({"base": b} if b else {})} for sid, b in own.items()}
    m["format_version"] = 10
    reseal(bundle, m)
    return bundle, m


@pytest.fixture(scope="module")
def ar_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("ar")
    csv, ck = str(d / "daily.csv"), str(d / "daily.pt")
    _series("x", 24).drop(columns="node").to_csv(csv, index=False)
    run_module("train", "--data", csv, "--target", "value", "--calendar", "none", "--base", "ar", "--hidden", "4",
               "--epochs", "1", "--quiet", "--out", ck)
    run_module("export", ck, "--out", str(d / "bundle"), "--formats", "onnx")
    return str(d / "bundle")


def test_a_stream_forecasts_from_its_own_series_base(ar_bundle, tmp_path):
    """Each stream's base is its series' (a shorter and a longer p than the model's, both in one
    ring), the model's for the rest; the graph's change is the same, so forecasts differ by exactly
    the bases' difference. Through a save, a load and a switch of series."""
    import runtime
    from runtime.scaler import Scaler
    m0 = read_manifest(ar_bundle)
    pooled = m0["model"]["base"]
    k, p = m0["model"]["horizon"], len(pooled) - 1
    rng = np.random.default_rng(0)
    short = (0.5 * rng.standard_normal((3, k))).tolist()            # p = 2
    long_ = (0.1 * rng.standard_normal((p + 4, k))).tolist()        # p + 3: longer than the model's
    bundle, m = _with_series_bases(ar_bundle, tmp_path / "b", {"short": short, "long": long_, "plain": None})
    assert format_version_for(m) == 10 and read_manifest(bundle)["series"]["short"]["base"] == short
    assert (f"residual base: AR({p}); 3 series, each with its own scale, 2 with their own base"
            in run_module("runtime", "info", bundle).stdout)
    raw = _series("x", 24, n=200, seed=5)[["value"]].to_numpy(np.float32)
    fc = runtime.load(bundle, engine="numpy", streams=4, series=["short", "long", "plain", None], deadband=False)
    got = np.stack([fc.step(np.repeat(r[None], 4, 0)) for r in raw])           # [T, 4, K]
    one = runtime.load(bundle, engine="numpy", series=["short"], deadband=False)
    np.testing.assert_allclose(np.stack([one.step(r) for r in raw]), got[:, 0], rtol=1e-5, atol=1e-4)
    j = m["model"]["residual_input"]
    level = Scaler.from_manifest(m).normalize(raw)[:, j]
    scale = m["scaler"]["targets"]["scale"][0]
    for b, coef in ((0, short), (1, long_)):
        want = (base_of(level, coef) - base_of(level, pooled)) * scale
        np.testing.assert_allclose((got[:, b] - got[:, 3]) / scale, want / scale, **TOL)
    np.testing.assert_allclose(got[:, 2], got[:, 3], rtol=1e-6, atol=1e-5)      # no own base: the model's
    # what the bases add per stream (the budget: 4 KB a node beyond the GRU state): the ring,
    # the stream's coefficients and constant, its base and level: 4 (p + pK + 2K + 1) bytes, 724 at p 24, K 6
    ring = fc._lags
    extra = (sum(getattr(ring, k).nbytes for k in ("lags", "_coef_b", "_const", "base")) + fc._level.nbytes) / fc.streams
    assert extra < 4096 and ring.lags.shape == (4, p + 3)
    fc.save_state(str(tmp_path / "s.npz"))
    again = runtime.load(bundle, engine="numpy", streams=4, series=["short", "long", "plain", None], deadband=False)
    again.load_state(str(tmp_path / "s.npz"))
    more = _series("x", 24, n=20, seed=6)[["value"]].to_numpy(np.float32)
    np.testing.assert_array_equal(np.stack([again.step(np.repeat(r[None], 4, 0)) for r in more]),
                                  np.stack([fc.step(np.repeat(r[None], 4, 0)) for r in more]))
    fc.set_series(0, None)                                                     # now the model's base
    r = np.repeat(more[-1][None], 4, 0)
    row = fc.step(r)
    np.testing.assert_allclose(row[0], row[3], rtol=1e-6, atol=1e-5)


def test_a_series_base_is_checked_and_needs_format_10(ar_bundle, tmp_path):
    m0 = read_manifest(ar_bundle)
    k = m0["model"]["horizon"]
    bundle, m = _with_series_bases(ar_bundle, tmp_path / "b", {"a": [[1.0] * k, [0.0] * k]})
    for edit, why in ((lambda b: b.update(format_version=9), r"has an AR base per series \('series\.<id>\.base'\) is format 10"),
                      (lambda b: b["series"]["a"]["base"][0].pop(), rf"series\.a\.base\[0\]' has {k - 1}"),
                      (lambda b: b["series"]["a"].update(base=[[1.0] * k]), r"series\.a\.base' expected a list of p \+ 1 rows"),
                      (lambda b: b["model"].pop("base"), r"series\.a\.base' is set on a model without model\.base")):
        bad = copy.deepcopy(m)
        edit(bad)
        reseal(bundle, bad)
        with pytest.raises(BundleError, match=why):
            read_manifest(bundle)


def test_each_series_validation_loss_is_recorded_per_epoch(pair, monkeypatch):
    """Many series: every epoch's history holds each series' own validation loss, row-weighted they make
    the pooled one; metrics name each series' best epoch, and the verdict says which still improved."""
    from train import fit as fit_module
    from train.fit import FitResult, StepLoss, TrainConfig, fit, series_best_epochs, stream_loss, track_series_best
    from train.model import RecurrentConfig, RecurrentModel
    _, data = pair
    model = RecurrentModel(RecurrentConfig(input_size=data.x.shape[1], hidden_size=4, horizon=6,
                                           residual_input=data.target_feature))
    res = fit(model, data, TrainConfig(epochs=3, patience=10, min_epoch_steps=1), progress=False)
    assert [set(h["val_loss_per_series"]) for h in res.history] == [{"daily", "walk"}] * 3
    per, loss = {}, StepLoss(data)
    pooled, _ = stream_loss(model, data, "val", loss, by_series=per)
    rows = {p.id: sum(min(b, p.stop) - max(a, p.start) for a, b in data.splits["val"] if p.start <= a < p.stop)
            for p in data.series.parts}
    assert pooled == pytest.approx(sum(per[s] * rows[s] for s in per) / sum(rows.values()), rel=1e-6)
    for p in data.series.parts:             # a series' loss is that of its own validation rows alone
        own = replace(data, splits={"val": [(a, b) for a, b in data.splits["val"] if p.start <= a < p.stop]})
        assert per[p.id] == pytest.approx(stream_loss(model, own, "val", loss)[0], rel=1e-6)
    assert per["daily"] != pytest.approx(per["walk"], rel=1e-2)
    assert res.series_best.keys() == {"daily", "walk"}
    for sid, (epoch, low) in res.series_best.items():
        assert low == min(h["val_loss_per_series"][sid] for h in res.history)
        assert res.history[epoch - 1]["val_loss_per_series"][sid] == low
    best = {}
    for e, per in enumerate(({"a": 3.0, "b": 1.0}, {"a": 2.0, "b": 2.0}), 1):
        track_series_best(best, per, e)
    assert series_best_epochs(FitResult([], 2, 1.0, 0, 1.0, series_best=best)) == {"a": 2, "b": 1}
    assert series_best_epochs(FitResult([], 1, 1.0, 0, 1.0)) == {}
    # Past HISTORY_SERIES series the epochs' history drops the per-series losses; the bests stay.
    monkeypatch.setattr(fit_module, "HISTORY_SERIES", 1)
    capped = fit(RecurrentModel(model.cfg), data, TrainConfig(epochs=2, patience=10, min_epoch_steps=1), progress=False)
    assert all("val_loss_per_series" not in h for h in capped.history) and capped.series_best.keys() == {"daily", "walk"}


def test_setting_stream_series_updates_one_stream(ar_bundle, tmp_path):
    """`set_series` changes one stream's row of the per-series constants: setting every stream's series
    grows linearly with the streams (it rebuilt every stream's on each call: 1,000 streams took 3.2 s,
    quadratic), and a stream switched back and forth forecasts as one set once."""
    import time

    import runtime
    rng = np.random.default_rng(1)
    k, p = len(read_manifest(ar_bundle)["model"]["base"][0]), len(read_manifest(ar_bundle)["model"]["base"]) - 1
    bundle, _ = _with_series_bases(ar_bundle, tmp_path / "b", {"a": (0.1 * rng.standard_normal((p + 2, k))).tolist(),
                                                               "b": None})
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    m["series"]["b"]["targets"]["scale"] = [3.0 * m["series"]["b"]["targets"]["scale"][0]]
    m["series"]["b"]["deadband"] = [0.05] * k
    reseal(bundle, m)

    def cost(n: int) -> float:
        fc = runtime.load(bundle, engine="numpy", streams=n)
        t0 = time.perf_counter()
        for s in range(n):
            fc.set_series(s, ("a", "b", None)[s % 3])
        return time.perf_counter() - t0
    small, large = min(cost(100) for _ in range(3)), cost(1000)
    assert large < 30 * small, (small, large)                 # linear: 10x; rebuilding every stream: about 100x
    final = ["a", "b", None, "b", "a", None]
    fc = runtime.load(bundle, engine="numpy", streams=6)
    for s, sid in [(0, "b"), (1, "a"), (3, "a"), (0, None), (4, "b"), (5, "a"), (0, "a"), (1, "b"), (3, "b"),
                   (4, "a"), (5, None)]:
        fc.set_series(s, sid)
    assert fc.series == final
    from runtime.bench import throughput
    assert throughput(bundle, streams=4, steps=20)["numpy/fp32"]["set_series_s"] > 0   # `runtime bench` says it
    fresh = runtime.load(bundle, engine="numpy", streams=6, series=final)
    raw = _series("x", 24, n=60, seed=3)[["value"]].to_numpy(np.float32)
    np.testing.assert_array_equal(np.stack([fc.step(np.repeat(r[None], 6, 0)) for r in raw]),
                                  np.stack([fresh.step(np.repeat(r[None], 6, 0)) for r in raw]))
