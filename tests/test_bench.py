"""Latency budgets and speed ratios, measured in one run so a noisy machine cannot fake them."""
import json
import os
import shutil
import time

import numpy as np
import pytest

import runtime
from conftest import reseal, run_module
from runtime.bench import check_budgets, latency, soak_test
from runtime.engines import NumpyEngine


def test_the_stored_budgets_pass_a_fresh_run_and_catch_a_slower_step(daphnet_bundle):
    """Every batch-1 artifact carries its measured p50 <= p99 and a budget. The budget is a real bound:
    a fresh run on the machine that built the bundle stays under it (at p50: a loaded machine's p99
    is noise), a step with its p99 just over it is reported, and one at it is not."""
    m = runtime.read_manifest(daphnet_bundle)
    b1 = [a["file"] for a in m["artifacts"] if a["batch"] in (None, 1)]
    assert sorted(m["latency_budget_us"]) == sorted(m["latency_us"]) == sorted(b1)
    lat = latency(daphnet_bundle, steps=1000, rounds=2, warmup=100)
    assert sorted(v["artifact"] for v in lat.values()) == sorted(b1)
    for key, v in lat.items():
        f, budget = v["artifact"], m["latency_budget_us"][v["artifact"]]
        assert 0 < m["latency_us"][f]["p50"] <= m["latency_us"][f]["p99"] < budget
        assert v["step_p50_us"] < budget, (key, v, budget)
        over = check_budgets(m, {key: {**v, "step_p99_us": budget * 1.01}})
        assert len(over) == 1 and over[0].startswith(f"{f} ({key}): p99"), over
        assert check_budgets(m, {key: {**v, "step_p99_us": budget}}) == []


def test_injected_sleep_trips_the_budget(daphnet_bundle, monkeypatch):
    real = NumpyEngine.invoke

    def slow(self):
        time.sleep(0.002)                    # 2 ms: far past any budget of a 10 µs step
        real(self)
    monkeypatch.setattr(NumpyEngine, "invoke", slow)
    lat = latency(daphnet_bundle, steps=200, rounds=1, warmup=10)
    over = check_budgets(runtime.read_manifest(daphnet_bundle), lat)
    assert any(line.startswith("weights.npz (numpy/fp32): p99") for line in over), over


def test_bench_cli_check_exit_codes(daphnet_bundle, tmp_path):
    """Exit 0 under generous budgets, 1 naming the artifact under impossible ones."""
    b = tmp_path / "b"
    shutil.copytree(daphnet_bundle, b)
    m = json.load(open(b / "manifest.json"))
    m["latency_budget_us"] = {k: 1e9 for k in m["latency_budget_us"]}
    reseal(str(b), m)
    p = run_module("runtime", "bench", str(b), "--steps", "1000", "--json", str(tmp_path / "r.json"), "--check",
                   check=False)
    assert p.returncode == 0, p.stderr[-1000:]
    assert json.load(open(tmp_path / "r.json"))["latency_b1"]
    m["latency_budget_us"] = {k: 0.01 for k in m["latency_budget_us"]}
    reseal(str(b), m)
    p = run_module("runtime", "bench", str(b), "--steps", "500", "--check", check=False)
    assert p.returncode == 1 and "OVER BUDGET: step.tflite (litert/fp32): p99" in p.stderr


def test_explicit_latency_budget_is_stored(daphnet_checkpoint, tmp_path):
    run_module("export", daphnet_checkpoint, "--out", str(tmp_path / "b"), "--formats", "onnx",
               "--latency-budget-us", "1234")
    m = runtime.read_manifest(str(tmp_path / "b"))
    assert m["latency_budget_us"] == {"weights.npz": 1234.0, "step.onnx": 1234.0}


def test_short_soak_keeps_memory_and_state(daphnet_bundle):
    s = soak_test(daphnet_bundle, 30_000)
    assert s["state_finite"] and s["state_resets"] == 0
    assert s["rss_growth_mb"] < 5.0


@pytest.mark.parametrize("which", ["daphnet_bundle", "calendar_bundle"])
def test_bench_torch_model_matches_the_bundle(which, request):
    """The eager baseline does Forecaster.step's work, the deadband and calendar inputs included
    (it once took only the raw reading and failed on a bundle with derived inputs)."""
    from bench.__main__ import torch_model, torch_stepper, with_derived
    from runtime.derived import golden_stream
    bundle = request.getfixturevalue(which)
    m = runtime.read_manifest(bundle)
    step = with_derived(torch_stepper(torch_model(m, bundle), m), m, bundle)
    fc = runtime.load(bundle, engine="numpy")
    raw, times = golden_stream(os.path.join(bundle, "golden.npz"))
    for i, r in enumerate(raw[:50]):
        want = fc.step(r) if times is None else fc.step(r, time=float(times[i]))
        assert np.allclose(step(r.astype(np.float32))[0], want, rtol=1e-4, atol=1e-3)
