"""Quantize stage on real data: drift within budget, coverage, and a broken calibration caught."""
import json
import os

import numpy as np
import pytest

import runtime
from conftest import copy_bundle, run_module
from quantize.pipeline import BUDGETS
from quantize.search import TARGET

# int8 tiers, RMSE/std(y) vs float over the streamed test split. ONNX int8 (per-channel int8
# weights, dynamic activations): the 1% budget itself. TFLite int8 on this tiny 3-epoch model:
# plain min/max full int8 drifts 1.7% (one per-tensor scale spans nine accelerometer channels);
# the search keeps the input path at int16 and lands at 0.56%, within the 1% budget, which is
# the tier. The file stays over the size rule (hidden 8: the per-channel scales and int64 zero
# points outweigh the weights), so it is kept only with --allow-drift, marked over budget.
ONNX_INT8_TIER = BUDGETS["onnx-int8"]
TFLITE_INT8_SMALL_MODEL_TIER = BUDGETS["tflite-int8"]
INT16_TIER = BUDGETS["tflite-int16"]


@pytest.fixture(scope="module")
def quantized_bundle(daphnet_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "bundle"
    copy_bundle(daphnet_bundle, out)
    p = run_module("quantize", str(out), "--activations", "int8", "--allow-drift", check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    return str(out)


def test_drift_within_budget_on_real_stream(quantized_bundle):
    import jsonschema
    m = runtime.read_manifest(quantized_bundle)
    schema_path = os.path.join(os.path.dirname(runtime.__file__), "manifest.schema.json")
    schema = json.load(open(schema_path))
    jsonschema.validate(m, schema)
    # every section a bundle holds is in the schema, and so in the manifest reference (docs/gen.py):
    # intervals, tflm, latency_us, latency_machine and graph_ops were missing
    assert set(m) <= set(schema["properties"]), sorted(set(m) - set(schema["properties"]))
    d = m["drift"]["artifacts"]
    onnx = d["step.int8.onnx"]
    assert onnx["steps"] >= 1000
    assert onnx["continuous"]["vs_float"]["rmse_over_std"] <= ONNX_INT8_TIER
    assert onnx["reset_per_window"]["vs_float"]["rmse_over_std"] <= ONNX_INT8_TIER
    assert onnx["task"]["mae_change"] <= 0.02 and onnx["size_ratio"] <= 0.5
    assert d["step.int8.tflite"]["continuous"]["vs_float"]["rmse_over_std"] <= TFLITE_INT8_SMALL_MODEL_TIER
    assert [a["file"] for a in m["artifacts"] if a.get("over_budget")] == ["step.int8.tflite"]
    assert m["drift"]["onnx_coverage"]["int8_mac_share"] == pytest.approx(1.0)
    rows = m["drift"]["candidates"]["step.int8.onnx"]
    chosen = [r for r in rows if r["chosen"]]
    assert len(rows) >= 4 and len(chosen) == 1 and chosen[0]["candidate"].startswith(("dynamic", "static"))
    assert onnx["chosen"] == chosen[0]["candidate"]          # chosen on validation, reported on test
    assert chosen[0]["val_rmse_over_std"] == min(r["val_rmse_over_std"] for r in rows)


def test_drift_does_not_grow_along_the_stream(quantized_bundle):
    """The real series streamed twice in a row (>= 10,000 steps, state carried): the second pass
    sees the same readings with a state that has run for thousands of steps, so any error that
    accumulates in the recurrent state shows up as a worse second pass."""
    from export.buildfile import read_build_file
    from runtime.engines import open_engine, run_stream
    m = runtime.read_manifest(quantized_bundle)
    md = m["model"]
    curve = m["drift"]["artifacts"]["step.int8.onnx"]["long_stream"]["rmse_over_std"]
    assert len(curve) >= 20 and max(curve) <= ONNX_INT8_TIER
    data = read_build_file(quantized_bundle, m)
    lo, hi = data.segments[0]
    x = np.concatenate([data.x[lo:hi]] * 2)
    assert len(x) >= 10_000
    art = {"engine": "onnxruntime", "precision": "int8"}
    yq = run_stream(open_engine(os.path.join(quantized_bundle, "step.int8.onnx"), art, md), x)
    yf = run_stream(open_engine(os.path.join(quantized_bundle, "step.onnx"), art, md), x)
    n, std = hi - lo, np.std(yf)
    first = np.sqrt(np.mean((yq[:n] - yf[:n]) ** 2)) / std
    second = np.sqrt(np.mean((yq[n:] - yf[n:]) ** 2)) / std
    assert second <= 1.2 * first + 1e-4, (first, second)


@pytest.mark.parametrize("engine, tier", [("onnxruntime", ONNX_INT8_TIER), ("litert", TFLITE_INT8_SMALL_MODEL_TIER)])
def test_quantized_bundle_verifies_and_streams(quantized_bundle, engine, tier):
    """verify passes, and the int8 artifact streams through Forecaster.step like the float model."""
    p = run_module("runtime", "verify", quantized_bundle)
    assert "FAIL" not in p.stdout and "step.int8.onnx" in p.stdout
    fc = runtime.load(quantized_bundle, engine=engine, precision="int8", deadband=False)   # the graphs themselves
    ref = runtime.load(quantized_bundle, engine="numpy", deadband=False)
    with np.load(quantized_bundle + ".build.npz") as z:      # 600 real readings of the test split, in order
        meta = json.loads(str(z["meta"]))
        a, b = max(meta["splits"]["test"], key=lambda r: r[1] - r[0])
        r = z["inputs"][a:b][:600]
    assert len(r) == 600
    got, want = np.array([fc.step(x) for x in r]), np.array([ref.step(x) for x in r])
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.sqrt(np.mean((got - want) ** 2)) / np.std(want) <= tier


def test_int16_activations_on_a_small_model(daphnet_bundle, tmp_path):
    """The converter leaves pot_scale_int16 at true, under which LiteRT's int16 SUB refused this
    model (sub.cc `input1_shift == 0 || input2_shift == 0`); quantize sets it false."""
    out = tmp_path / "b"
    copy_bundle(daphnet_bundle, out)
    p = run_module("quantize", str(out), "--formats", "tflite", "--activations", "int16", check=False)
    assert p.returncode == 0, p.stderr[-500:]
    d = runtime.read_manifest(str(out))["drift"]["artifacts"]["step.int16.tflite"]
    assert d["continuous"]["vs_float"]["rmse_over_std"] <= INT16_TIER


def test_broken_calibration_is_caught_by_the_budget(daphnet_bundle, tmp_path):
    out = tmp_path / "b"
    copy_bundle(daphnet_bundle, out)
    before = json.load(open(out / "manifest.json"))
    p = run_module("quantize", str(out), "--formats", "tflite", "--activations", "int8",
                   "--samples", "2", "--range-margin", "0", check=False)   # 2 calibration pairs
    assert p.returncode == 1 and "step.int8.tflite: RMSE/std(y)" in p.stderr     # nothing requested was added
    m = json.load(open(out / "manifest.json"))
    assert not os.path.exists(out / "step.int8.tflite")
    assert [a["file"] for a in m["artifacts"]] == [a["file"] for a in before["artifacts"]]
    runtime.load(str(out), engine="numpy")           # checksums still right after the rewrite


def test_user_calibration_csv(daphnet_bundle, tmp_path):
    out = tmp_path / "b"
    copy_bundle(daphnet_bundle, out)
    feats = [f["name"] for f in runtime.read_manifest(str(out))["features"]]
    with np.load(out / "golden.npz") as g:
        rows = g["inputs"]
    lines = ["time," + ",".join(reversed(feats))] + [f"{i}," + ",".join(map(str, r[::-1])) for i, r in enumerate(rows)]
    (tmp_path / "cal.csv").write_text("\n".join(lines) + "\n")
    p = run_module("quantize", str(out), "--formats", "onnx", "--calibration", str(tmp_path / "cal.csv"), check=False)
    assert p.returncode == 0, p.stderr[-1000:]
    cal = runtime.read_manifest(str(out))["drift"]["calibration"]
    assert cal["source"].endswith("cal.csv") and cal["pairs"] > len(rows)
    (tmp_path / "bad.csv").write_text("time,x\n1,2\n")
    p = run_module("quantize", str(out), "--calibration", str(tmp_path / "bad.csv"), check=False)
    assert p.returncode == 2 and "missing feature column(s) ankle_horiz_fwd" in p.stderr


def test_a_matmul_left_in_float_fails_the_coverage_check(daphnet_bundle, tmp_path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from quantize.methods import onnx_coverage
    src = os.path.join(daphnet_bundle, "step.onnx")
    matmuls = [n.name for n in onnx.load(src).graph.node if n.op_type in ("MatMul", "Gemm")]
    out = str(tmp_path / "partial.onnx")
    quantize_dynamic(src, out, weight_type=QuantType.QInt8, nodes_to_exclude=matmuls[:1])
    with pytest.raises(RuntimeError, match="MatMul/Gemm left in float"):
        onnx_coverage(src, out)
    full = str(tmp_path / "full.onnx")
    quantize_dynamic(src, full, weight_type=QuantType.QInt8)
    assert onnx_coverage(src, full)["int8_mac_share"] == pytest.approx(1.0)


def test_an_input_scale_is_folded_without_changing_the_forecast(daphnet_bundle, tmp_path):
    """An artifact whose graph expects x / s (first-layer weights times s) gives the float
    forecasts through Forecaster.step and engine.run alike: the scale costs nothing in accuracy."""
    from export.writer import BundleWriter
    from quantize.equalize import equalize_onnx
    out = copy_bundle(daphnet_bundle, tmp_path / "b")
    s = np.random.default_rng(0).uniform(0.2, 5.0, 9).astype(np.float32)
    with BundleWriter(out, base=out) as w:
        equalize_onnx(w.path("step.onnx"), w.path("step.eq.onnx"), s)
        w.add_artifact("step.eq.onnx", "onnxruntime", "int16", input_scale=[float(v) for v in s])  # a float graph
    eq = runtime.load(out, engine="onnxruntime", precision="int16")
    ref = runtime.load(out, engine="onnxruntime")
    with np.load(os.path.join(out, "golden.npz")) as g:
        r = g["inputs"]
    got, want = np.stack([eq.step(x) for x in r]), np.stack([ref.step(x) for x in r])
    assert np.max(np.abs(got - want)) <= 1e-4 * ref.manifest["scaler"]["targets"]["scale"][0]



def heavy_tailed_frame(n=3000, seed=0):
    """Ten-minute readings: a temperature with a daily swing that rain cools, and the rain
    itself, 0 at 98% of the readings with rare spikes up to ~80 mm (about 25 std out)."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    rain = np.where(rng.random(n) < 0.02, rng.exponential(20.0, n), 0.0)
    wet = np.convolve(rain, np.exp(-np.arange(30) / 8.0), mode="full")[:n]
    temp = 15 + 5 * np.sin(2 * np.pi * t / 144) - 0.05 * wet + 2 * np.cumsum(rng.standard_normal(n)) / np.sqrt(n)
    return pd.DataFrame({"time": pd.date_range("2024-01-01", periods=n, freq="10min").strftime("%Y-%m-%dT%H:%M:%S"),
                         "rain": rain.round(1), "temp": temp.round(3)})


def test_the_search_rescues_a_model_that_plain_min_max_fails(tmp_path):
    """One heavy-tailed input: plain min/max full int8 drifts past the budget on validation; the
    search (input scaling, ranges, then int16 on the few ops that need it) ends within it, on
    the test split, and names the ops it kept precise."""
    heavy_tailed_frame().to_csv(tmp_path / "h.csv", index=False)
    run_module("train", "--data", str(tmp_path / "h.csv"), "--target", "temp", "--hidden", "8", "--epochs", "5",
               "--calendar", "none", "--base", "level", "--quiet", "--out", str(tmp_path / "h.pt"))   # (measured: the AR-base model stays in budget)
    run_module("export", str(tmp_path / "h.pt"), "--out", str(tmp_path / "b"))
    p = run_module("quantize", str(tmp_path / "b"), "--formats", "tflite", "--activations", "int8", "--allow-drift",
                   check=False)
    assert p.returncode == 0, p.stderr[-1500:]
    drift = runtime.read_manifest(str(tmp_path / "b"))["drift"]
    rows = {r["candidate"]: r for r in drift["candidates"]["step.int8.tflite"]}
    plain = rows["full integer (int8), inputs as trained, min/max ranges"]
    assert plain["val_rmse_over_std"] > BUDGETS["tflite-int8"]
    chosen = next(r for r in rows.values() if r["chosen"])
    assert chosen["val_rmse_over_std"] <= TARGET["rmse_over_std"] and chosen["val_max_abs_over_std"] <= TARGET["max_abs_over_std"]
    d = drift["artifacts"]["step.int8.tflite"]
    assert d["continuous"]["vs_float"]["rmse_over_std"] <= BUDGETS["tflite-int8"]
    assert d["precise_ops"] == chosen["precise_ops"] and 0 < len(d["precise_ops"]) < 23
    assert drift["mixed_precision"]["step.int8.tflite"]["kept"] == d["precise_ops"]
    assert "int16 activations" in p.stdout


def test_exit_status_keeps_what_is_within_budget(daphnet_bundle, tmp_path):
    """On this hidden-8 model the TFLite int8 file cannot be half the float one (format overhead):
    it is left out and named, the ONNX int8 is added, and the command exits 0; --strict exits 1;
    an unknown --formats value exits 2."""
    out = copy_bundle(daphnet_bundle, tmp_path / "b")
    p = run_module("quantize", out, "--activations", "int8", "--samples", "500", check=False)
    assert p.returncode == 0, p.stderr[-1500:]
    assert "step.int8.tflite: " in p.stderr and "size" in p.stderr and "added: step.int8.onnx" in p.stdout
    files = [a["file"] for a in runtime.read_manifest(out)["artifacts"]]
    assert "step.int8.onnx" in files and "step.int8.tflite" not in files
    assert "step.int8.onnx" in open(os.path.join(out, "REPORT.md")).read().split("## Quantization drift")[0]
    p = run_module("quantize", out, "--activations", "int8", "--samples", "500", "--strict", check=False)
    assert p.returncode == 1 and "left out" in p.stderr
    p = run_module("quantize", out, "--formats", "onnx,tensorrt", check=False)
    assert p.returncode == 2 and "unknown value(s) tensorrt" in p.stderr


def test_a_calibration_csv_without_usable_readings_is_one_line(daphnet_bundle, tmp_path):
    """A header alone, text everywhere or 1e308 everywhere crashed deep in the range search
    (IndexError on an empty percentile); one row calibrated on two 'pairs' without a word."""
    from quantize.pipeline import MIN_CALIBRATION_ROWS, calibration_readings
    m = runtime.read_manifest(daphnet_bundle)
    feats = [f["name"] for f in m["features"]]
    header = ",".join(["time", *feats])
    for body, usable in (([], 0), ([",".join(["1"] + ["abc"] * len(feats))] * 300, 0),
                         ([",".join(["1"] + ["1e308"] * len(feats))] * 300, 0), ([",".join(["1"] + ["0.5"] * len(feats))], 1)):
        path = tmp_path / "cal.csv"
        path.write_text("\n".join([header, *body]) + "\n")
        with pytest.raises(ValueError, match=rf"{usable} usable reading\(s\).*at least {MIN_CALIBRATION_ROWS}"):
            calibration_readings(m, None, str(path))


def test_calibration_gaps_are_filled_within_each_series():
    """A gap at a series' start was filled from the previous series' last reading (ffill/bfill over
    the whole file): a reading that series never gave, in another series' units."""
    import io
    from quantize.pipeline import calibration_readings
    unit = {"offset": [0.0], "scale": [1.0]}
    m = {"features": [{"name": "v"}], "series": {"a": {"inputs": unit}, "b": {"inputs": unit}}}
    rows = ["series,v"] + ["a,1"] * 100 + ["b,"] + ["b,10"] * 100
    x = calibration_readings(m, None, io.StringIO("\n".join(rows) + "\n"))
    assert x[100, 0] == 10.0 and set(np.unique(x)) == {1.0, 10.0}


def test_calibration_series_ids_are_text_and_each_row_names_one():
    """Ids 1 and 01 were read as the number 1.0 (one series, or none of the bundle's); an empty id
    raised a TypeError while the error line was written."""
    import io
    from quantize.pipeline import calibration_readings
    m = {"features": [{"name": "v"}], "series": {"1": {"inputs": {"offset": [0.0], "scale": [1.0]}},
                                                  "01": {"inputs": {"offset": [0.0], "scale": [10.0]}}}}
    rows = ["series,v"] + ["1,5"] * 100 + ["01,50"] * 100
    x = calibration_readings(m, None, io.StringIO("\n".join(rows) + "\n"))
    assert set(np.unique(x)) == {5.0}
    with pytest.raises(ValueError, match=r"1 row\(s\) without a series id"):
        calibration_readings(m, None, io.StringIO("\n".join(rows + [",7"]) + "\n"))


@pytest.mark.parametrize("flag,value", [("--range-margin", "nan"), ("--range-margin", "inf"), ("--samples", "0"),
                                        ("--latency-budget-us", "nan")])
def test_a_number_flag_that_is_no_number_stops_at_parse(daphnet_bundle, tmp_path, flag, value):
    """--range-margin nan ran the whole search and failed writing the manifest ('Out of range float
    values are not JSON compliant')."""
    out = copy_bundle(daphnet_bundle, tmp_path / "b")
    p = run_module("quantize", out, flag, value, check=False, timeout=60)
    assert p.returncode == 2 and "expected" in p.stderr.strip().splitlines()[-1], p.stderr[-1000:]
