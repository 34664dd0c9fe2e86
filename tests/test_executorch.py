"""ExecuTorch as a benchmark peer: the bundle's step as an XNNPACK .pte, run through ExecuTorch's
runtime bindings behind the engines' interface, parity-checked like any engine, timed like them."""
import os

import numpy as np
import pytest

from bench.executorch import (ENGINE, ExecuTorchEngine, executorch_results, export_pte, forecaster, parity,
                              single_thread, step_module)
from runtime import load
from runtime.bundle import TIERS, read_manifest
from runtime.derived import golden_stream
from runtime.engines import open_engine, run_stream


@pytest.fixture(scope="module")
def pte_folder(tmp_path_factory):
    single_thread()
    return str(tmp_path_factory.mktemp("pte"))


def test_pte_matches_the_numpy_reference_closed_loop(daphnet_bundle, pte_folder):
    m = read_manifest(daphnet_bundle)
    fc = forecaster(daphnet_bundle, m, pte_folder)
    check = parity(daphnet_bundle, m, fc.engine)
    assert check["steps"] >= 500 and check["ok"] and check["max_abs_err"] <= TIERS["fp32"], check
    assert check["max_abs_err"] <= 1e-5                       # float32 rounding only


def test_forecaster_step_on_executorch_equals_litert(daphnet_bundle, pte_folder):
    m = read_manifest(daphnet_bundle)
    raw, _ = golden_stream(os.path.join(daphnet_bundle, "golden.npz"))
    fc, lite = forecaster(daphnet_bundle, m, pte_folder), load(daphnet_bundle, engine="litert")
    got, want = np.stack([fc.step(r) for r in raw]), np.stack([lite.step(r) for r in raw])
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.max(np.abs(got - want)) <= TIERS["fp32"] * m["scaler"]["targets"]["scale"][0]


def test_batched_pte_matches_numpy_per_stream(daphnet_bundle, pte_folder):
    m = read_manifest(daphnet_bundle)
    fc = forecaster(daphnet_bundle, m, pte_folder, streams=4)
    assert fc.engine.x.shape == (4, m["model"]["input_size"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4, m["model"]["input_size"])).astype(np.float32)
    ref = open_engine(os.path.join(daphnet_bundle, "weights.npz"), {"engine": "numpy"}, m["model"], 4)
    assert np.max(np.abs(run_stream(fc.engine, x) - run_stream(ref, x))) <= TIERS["fp32"]


def test_parity_catches_a_wrong_graph(daphnet_bundle, tmp_path):
    """The check can fail: a .pte whose head bias is off by 0.01 is over the float tier."""
    m = read_manifest(daphnet_bundle)
    step = step_module(daphnet_bundle, m)
    step.head_b += 0.01
    path = str(tmp_path / "wrong.pte")
    export_pte(step, path, 1)
    md = m["model"]
    eng = ExecuTorchEngine(path, 1, md["input_size"], (md["num_layers"], 1, md["hidden_size"]), md["output_size"],
                           md["residual_input"])
    check = parity(daphnet_bundle, m, eng)
    assert not check["ok"] and check["max_abs_err"] == pytest.approx(0.01, rel=0.05)


def test_results_for_the_bench_table(daphnet_bundle, pte_folder):
    res = executorch_results(daphnet_bundle, steps=500, streams=4, folder=pte_folder, beside=True)
    et = res[ENGINE]
    assert et["parity_vs_numpy"]["ok"] and et["pte_bytes"] > 1000 and et["threads"] == 1
    lat = et["latency_b1"]
    assert 0 < lat["raw_p50_us"] <= lat["step_p50_us"] and lat["step_p50_us"] <= lat["step_p99_us"]
    assert et["throughput_b4"]["stream_steps_per_s"] > 0
    assert "litert/fp32" in res["beside"]["latency_b1"] and "litert/fp32" in res["beside"]["throughput_b4"]
