"""Runtime: the public API, bad input, bundle refusal, state, multi-stream, import isolation."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import runtime
from conftest import ROOT, reseal, run_module
from runtime.bundle import TIERS, BundleError, load_weights
from runtime.engines import available_engines

INSTALLED = available_engines()
ENGINES = [pytest.param(e, marks=pytest.mark.skipif(e not in INSTALLED, reason=f"{e} not installed"))
           for e in ("numpy", "onnxruntime", "litert")]
NATIVE = INSTALLED[0]       # the fastest installed engine (litert or onnxruntime on every venv we test)


def _readings(bundle, n=200):
    with np.load(os.path.join(bundle, "golden.npz")) as g:
        return np.resize(g["inputs"], (n, g["inputs"].shape[1]))


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_agree_through_forecaster(daphnet_bundle, engine):
    """Each engine's Forecaster stream against the golden forecasts another engine recorded at
    export (where every float artifact was checked against PyTorch): never against itself.
    The golden forecasts are the graph's own, without the deadband."""
    fc = runtime.load(daphnet_bundle, engine=engine, deadband=False)
    assert not fc.state.any()                                 # a fresh forecaster starts at zero
    m = fc.manifest
    other = "step.onnx" if engine == "numpy" else "weights.npz"
    with np.load(os.path.join(daphnet_bundle, "golden.npz")) as g:
        readings, want = g["inputs"], g[f"forecast/{other}"]
    got = np.stack([fc.step(r) for r in readings])
    assert got.shape == want.shape == (len(readings), m["model"]["output_size"])
    tol = TIERS["fp32"] * m["scaler"]["targets"]["scale"][0]      # the float tier, in raw units
    assert np.max(np.abs(got - want)) <= tol


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("batch", [1, 4])
def test_bound_buffers_contract(daphnet_bundle, engine, batch):
    """x, h start at zero; invoke() leaves its inputs alone and agrees with the numpy graph.

    Forecaster.step relies on all three: the state lives in the engine's h buffer, and the
    residual level is read back from x after the call. (Quantized engines: test_quantize.)"""
    from runtime.engines import open_engine
    m = runtime.read_manifest(daphnet_bundle)
    md = m["model"]
    ref = open_engine(os.path.join(daphnet_bundle, "weights.npz"), {"engine": "numpy"}, md, batch)
    for art in m["artifacts"]:
        if art["engine"] != engine or art.get("batch") not in (None, batch) or art["precision"] != "fp32":
            continue
        eng = open_engine(os.path.join(daphnet_bundle, art["file"]), art, md, batch)
        assert eng.x.shape == (batch, md["input_size"]) and eng.y.shape == (batch, md["output_size"])
        assert eng.h.shape == eng.h_next.shape == (md["num_layers"], batch, md["hidden_size"])
        assert not eng.x.any() and not eng.h.any()
        rng = np.random.default_rng(0)
        for _ in range(3):
            x = rng.standard_normal(eng.x.shape).astype(np.float32)
            h = rng.uniform(-0.9, 0.9, eng.h.shape).astype(np.float32)
            eng.x[...], eng.h[...] = x, h
            eng.invoke()
            assert np.array_equal(eng.x, x) and np.array_equal(eng.h, h), art["file"]
            want_y, want_h = ref.cell_step(x, h)
            tier = TIERS["fp32"]
            assert np.max(np.abs(eng.y - want_y)) <= tier and np.max(np.abs(eng.h_next - want_h)) <= tier, art["file"]


@pytest.mark.skipif("litert" not in INSTALLED, reason="litert not installed")
def test_litert_copying_path_when_views_are_unavailable(daphnet_bundle, monkeypatch):
    """An interpreter without native tensor views (or whose tensors move) goes through set/get_tensor."""
    from runtime.engines import LiteRTEngine
    monkeypatch.setattr(LiteRTEngine, "_native_views", lambda self: None)
    fc, ref = runtime.load(daphnet_bundle, engine="litert"), runtime.load(daphnet_bundle, engine="numpy")
    assert fc.engine.invoke == fc.engine._invoke_copying
    tol = TIERS["fp32"] * fc.manifest["scaler"]["targets"]["scale"][0]
    for r in _readings(daphnet_bundle, 100):
        assert np.max(np.abs(fc.step(r) - ref.step(r))) <= tol


def test_multi_stream_matches_single_streams_and_resets_one(daphnet_bundle):
    r = _readings(daphnet_bundle, 100)
    multi = runtime.load(daphnet_bundle, engine=NATIVE, streams=4)
    singles = [runtime.load(daphnet_bundle, engine="numpy") for _ in range(4)]
    for t in range(100):
        rows = np.stack([r[(t + 5 * k) % 100] for k in range(4)])
        y = multi.step(rows)
        assert y.shape == (4, multi.manifest["model"]["output_size"])
        for k in range(4):
            assert np.allclose(y[k], singles[k].step(rows[k]), atol=1e-3)
    multi.reset(stream=2)
    assert not multi.state[:, 2].any() and multi.state[:, 1].any()
    lite = runtime.load(daphnet_bundle, engine="auto", streams=4)
    assert lite.engine.name == "litert"                       # the batch-4 TFLite file
    with pytest.raises(BundleError, match="streams=5"):
        runtime.load(daphnet_bundle, engine="litert", streams=5)


def test_wrong_width_names_features(daphnet_bundle):
    fc = runtime.load(daphnet_bundle, engine="numpy")
    with pytest.raises(ValueError, match="expected 9 values .* in this order: ankle_horiz_fwd, ankle_vert"):
        fc.step([1.0, 2.0])


def test_nan_policies_and_out_of_range(daphnet_bundle):
    r = _readings(daphnet_bundle, 3)
    hold = runtime.load(daphnet_bundle, engine="numpy", nan_policy="hold")
    mean = runtime.load(daphnet_bundle, engine="numpy", nan_policy="mean")
    bad = r[1].copy()
    bad[0] = np.nan
    for fc in (hold, mean):
        fc.step(r[0])
        y = fc.step(bad)
        assert np.isfinite(y).all() and fc.stats["imputed"] == 1
    held = r[0].copy()
    held[1:] = r[1][1:]
    ref = runtime.load(daphnet_bundle, engine="numpy")
    ref.step(r[0])
    assert np.allclose(hold.state, (ref.step(held), ref.state)[1])
    # 'mean' filled the training mean (the scaler's offset) in, and nothing else changed.
    filled = r[1].copy()
    filled[0] = mean.manifest["scaler"]["inputs"]["offset"][0]
    ref_mean = runtime.load(daphnet_bundle, engine="numpy")
    ref_mean.step(r[0])
    ref_mean.step(filled)
    assert np.allclose(mean.state, ref_mean.state, atol=1e-6) and not np.allclose(mean.state, hold.state, atol=1e-3)
    strict = runtime.load(daphnet_bundle, engine="numpy", nan_policy="raise")
    with pytest.raises(ValueError, match="non-finite or absurd reading for ankle_horiz_fwd"):
        strict.step(bad)
    far = r[0].copy()
    sc = hold.manifest["scaler"]["inputs"]
    far[3] = sc["offset"][3] + 10 * sc["scale"][3]       # 10 sigmas: out of range, still used
    hold.step(far)
    assert hold.stats["out_of_range"] == 1 and hold.stats["rejected"] == 0


def test_a_loggers_no_reading_code_outside_the_range_is_missing(daphnet_bundle):
    """-9999 on a sensor whose 6-sigma band ends near -1000 (68 sigmas, inside the 1000-sigma reject
    band) was fed to the model as a reading; it now goes through the nan policy like NaN. The same
    code inside a sensor's range is a reading."""
    r = _readings(daphnet_bundle, 2)
    coded, missing = r[1].copy(), r[1].copy()
    coded[8], missing[8] = -9999.0, np.nan
    a, b = runtime.load(daphnet_bundle, engine="numpy"), runtime.load(daphnet_bundle, engine="numpy")
    a.step(r[0]), b.step(r[0])
    np.testing.assert_array_equal(a.step(coded), b.step(missing))
    assert a.stats["rejected"] == 1 and a.stats["imputed"] == 1
    sc = a.manifest["scaler"]["inputs"]
    assert abs(-999.0 - sc["offset"][1]) < 6 * sc["scale"][1]           # ankle_vert: -999 mg is a reading
    inside = r[1].copy()
    inside[1] = -999.0
    c = runtime.load(daphnet_bundle, engine="numpy")
    c.step(inside)
    assert c.stats["rejected"] == 0 and c.stats["imputed"] == 0


def test_non_finite_state_is_reset_and_counted(daphnet_bundle):
    ref = runtime.load(daphnet_bundle, engine="numpy")

    class Broken(type(ref.engine)):               # an engine whose kernel goes wrong once
        def invoke(self):
            super().invoke()
            if not self.broke:
                self.h_next[:, 0, 3], self.broke = np.nan, True

    md = ref.manifest["model"]
    eng = Broken(load_weights(os.path.join(daphnet_bundle, "weights.npz"), md), md["num_layers"],
                 md.get("residual_input"))
    eng.broke = False
    fc = runtime.Forecaster(daphnet_bundle, ref.manifest, eng, ref.artifact)
    r = _readings(daphnet_bundle, 2)
    y = fc.step(r[0])
    assert np.isnan(y).all() and fc.stats["state_resets"] == 1
    assert np.isfinite(fc.state).all() and not fc.state.any()
    assert np.isfinite(fc.step(r[1])).all() and fc.stats["state_resets"] == 1


def test_state_round_trip_and_foreign_state_refused(daphnet_bundle, two_layer_bundle, tmp_path):
    r = _readings(daphnet_bundle, 50)
    fc = runtime.load(daphnet_bundle, engine="numpy")
    for x in r[:25]:
        fc.step(x)
    fc.save_state(str(tmp_path / "s.npz"))
    cont = [fc.step(x) for x in r[25:]]
    fc2 = runtime.load(daphnet_bundle, engine=NATIVE)
    fc2.load_state(str(tmp_path / "s.npz"))
    assert np.allclose(cont, [fc2.step(x) for x in r[25:]], atol=1e-3)
    other = runtime.load(two_layer_bundle, engine="numpy")
    with pytest.raises(ValueError, match="belongs to bundle"):
        other.load_state(str(tmp_path / "s.npz"))
    with pytest.raises(ValueError, match=r"state must be float32 \[1, 1, 8\]"):
        fc.state = np.zeros((2, 1, 8))


def _no_change_where_deadband(bundle, engine):
    """(forecasts with the deadband, without it, the graph's |change| normalized, tau) over the golden readings."""
    with np.load(os.path.join(bundle, "golden.npz")) as g:
        readings = g["inputs"]
    on, off = runtime.load(bundle, engine=engine), runtime.load(bundle, engine=engine, deadband=False)
    m = on.manifest
    y_on, y_off = np.stack([on.step(r) for r in readings]), np.stack([off.step(r) for r in readings])
    level, scale = readings[:, m["model"]["residual_input"], None], m["scaler"]["targets"]["scale"][0]
    return y_on, y_off, np.abs(y_off - level) / scale, np.asarray(m["model"]["deadband"]), level, scale


@pytest.mark.parametrize("engine", ENGINES)
def test_the_deadband_forecasts_no_change_below_its_threshold_only(daphnet_bundle, engine):
    """A forecast change below tau_k (manifest model.deadband, normalized) becomes exactly the
    current reading; every other forecast is untouched. The same on every engine."""
    y_on, y_off, change, tau, level, scale = _no_change_where_deadband(daphnet_bundle, engine)
    near = np.abs(change - tau) < 1e-4                # float32 rounding may put these either side
    dead = (change < tau) & ~near
    assert dead.mean() > 0.05 and (~dead & ~near).mean() > 0.05, "the test bundle's deadband checks nothing"
    np.testing.assert_allclose(y_on[dead], np.broadcast_to(level, y_on.shape)[dead], rtol=0, atol=1e-6 * scale)
    live = (change > tau) & ~near
    assert np.array_equal(y_on[live], y_off[live])


def test_a_format_3_bundle_without_a_deadband_still_loads(daphnet_bundle, tmp_path):
    """Format 4 added model.deadband; the runtime reads the previous version, which has none."""
    b = tmp_path / "v3"
    shutil.copytree(daphnet_bundle, b)
    m = json.load(open(b / "manifest.json"))
    m["model"].pop("base", None)               # (format 7's AR base: what a format-3 model never had)
    v4 = tmp_path / "v4"
    shutil.copytree(b, v4)
    reseal(str(v4), {**m, "format_version": 4})
    m["format_version"] = 3
    del m["model"]["deadband"]
    reseal(str(b), m)
    with np.load(b / "golden.npz") as g:
        readings = g["inputs"]
    old, off = runtime.load(str(b), engine="numpy"), runtime.load(str(v4), engine="numpy", deadband=False)
    assert np.array_equal(np.stack([old.step(r) for r in readings]), np.stack([off.step(r) for r in readings]))


@pytest.mark.parametrize("damage, message", [
    ("version", "unknown format_version 99"),
    ("checksum", "checksum mismatch"),
    ("missing", "names a file that is missing"),
    ("edited", "does not match the manifest's content"),
    ("shape", "lists 9 features and 0 derived inputs; model.input_size is 4"),
    ("weights", "has shape"),
    ("deadband", r"model.deadband\[2\]' is 'wide'"),
    ("deadband_len", "model.deadband' has 2 entries; expected 6"),
])
def test_damaged_bundles_are_refused(daphnet_bundle, tmp_path, damage, message):
    b = tmp_path / "b"
    shutil.copytree(daphnet_bundle, b)
    m = json.load(open(b / "manifest.json"))
    if damage == "version":
        m["format_version"] = 99
    elif damage == "checksum":
        data = bytearray((b / "weights.npz").read_bytes())
        data[-100] ^= 0xFF
        (b / "weights.npz").write_bytes(bytes(data))
    elif damage == "missing":
        os.remove(b / "weights.npz")
    elif damage == "edited":                # +10 on the target offset: every forecast 10 units off
        m["scaler"]["targets"]["offset"][0] += 10.0
    if damage in ("shape", "weights"):       # the id is made to match: the field checks must catch it
        m["model"]["input_size" if damage == "shape" else "hidden_size"] = 4 if damage == "shape" else 16
        reseal(str(b), m)
    elif damage.startswith("deadband"):
        m["model"]["deadband"] = [0.1, 0.2] if damage == "deadband_len" else [0.1, 0.2, "wide", 0.1, 0.1, 0.1]
        reseal(str(b), m)
    else:
        json.dump(m, open(b / "manifest.json", "w"))
    with pytest.raises(BundleError, match=message):
        runtime.load(str(b), engine="numpy")


def test_verify_and_stream_cli(daphnet_bundle, tmp_path):
    p = run_module("runtime", "verify", daphnet_bundle)
    assert p.stdout.count("ok ") >= len(INSTALLED) and "FAIL" not in p.stdout
    m = runtime.read_manifest(daphnet_bundle)
    feats = [f["name"] for f in m["features"]]
    r = _readings(daphnet_bundle, 5)
    rows = ["time," + ",".join(reversed(feats))] + [f"t{i}," + ",".join(map(str, reversed(x))) for i, x in enumerate(r)]
    rows[3] = rows[3].replace(str(r[2][-1]), "", 1)        # a missing cell
    rows[4] = rows[4].replace(str(r[3][-1]), "err", 1)     # a sensor's error token
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(tmp_path / "in.csv"),
                   "--state", str(tmp_path / "state.npz"))
    out = p.stdout.strip().splitlines()
    assert out[0] == "time," + ",".join(f"ankle_horiz_fwd+{1000 * k / 64:g}ms" for k in range(1, 7))   # 64 Hz: 15.625 ms
    assert len(out) == 6 and out[1].startswith("t0,")
    assert json.loads(p.stderr.strip().splitlines()[-1])["imputed"] == 2
    assert os.path.exists(tmp_path / "state.npz")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stream_in_a_pipe_answers_each_line_and_stops_cleanly(daphnet_bundle, tmp_path, sig):
    """One forecast line per reading as it arrives (flushed), then a signal: exit 0, state saved."""
    import select
    import signal
    feats = runtime.read_manifest(daphnet_bundle)["features"]
    state = tmp_path / "state.npz"
    p = subprocess.Popen([sys.executable, "-m", "runtime", "stream", daphnet_bundle, "--state", str(state)],
                         cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def line():
        assert select.select([p.stdout], [], [], 60)[0], "no forecast line within 60 s"
        return p.stdout.readline()
    try:
        p.stdin.write(",".join(f["name"] for f in feats) + "\n")
        p.stdin.flush()
        assert line().startswith("ankle_horiz_fwd+15.625ms,")
        for x in _readings(daphnet_bundle, 3):            # one reading in, its forecast out
            p.stdin.write(",".join(map(str, x)) + "\n")
            p.stdin.flush()
            assert len(line().split(",")) == 6
        p.send_signal(getattr(signal, sig))
        assert p.wait(timeout=60) == 0
    finally:
        p.kill()
    assert json.loads(p.stderr.read().strip().splitlines()[-1])["readings"] == 3
    fc = runtime.load(daphnet_bundle, engine="numpy")
    fc.load_state(str(state))
    assert fc.state.any()


def test_stream_into_a_closed_pipe_ends_quietly(daphnet_bundle, tmp_path):
    """`runtime stream ... | head -1`: the reader leaving is a normal end, not an error."""
    feats = [f["name"] for f in runtime.read_manifest(daphnet_bundle)["features"]]
    rows = [",".join(feats)] + [",".join(map(str, x)) for x in _readings(daphnet_bundle, 5000)]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    p = subprocess.Popen([sys.executable, "-m", "runtime", "stream", daphnet_bundle, "--input", str(tmp_path / "in.csv")],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.readline()
    p.stdout.close()                                     # more than a pipe buffer is still to come
    assert p.wait(timeout=120) == 0
    err = p.stderr.read()
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_runtime_imports_no_workstation_module(daphnet_bundle):
    code = (f"import sys, runtime\nfc = runtime.load({daphnet_bundle!r}, engine='auto')\n"
            "for _ in range(10): fc.step([0.0] * 9)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'tensorflow', 'onnx', 'litert_torch', 'ai_edge_quantizer', 'train', 'export', 'quantize', 'pandas')]\n"
            "print(fc.engine.name, bad)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    engine, bad = p.stdout.strip().split(" ", 1)
    assert engine in INSTALLED and bad == "[]", p.stdout


def test_stream_after_a_switch_starts_fresh_from_a_foreign_state(daphnet_bundle, two_layer_bundle, tmp_path):
    """A flash switches `current` under a running service: the old bundle's state is refused with a
    warning and the stream starts from zero instead of crash-looping."""
    fc = runtime.load(daphnet_bundle, engine="numpy")
    fc.step(_readings(daphnet_bundle, 1)[0])
    fc.save_state(str(tmp_path / "state.npz"))
    feats = [f["name"] for f in runtime.read_manifest(two_layer_bundle)["features"]]
    rows = [",".join(feats)] + [",".join(map(str, r)) for r in _readings(two_layer_bundle, 3)]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    p = run_module("runtime", "stream", two_layer_bundle, "--input", str(tmp_path / "in.csv"),
                   "--state", str(tmp_path / "state.npz"))
    assert "warning: not restoring" in p.stderr and len(p.stdout.strip().splitlines()) == 4
    runtime.load(two_layer_bundle, engine="numpy").load_state(str(tmp_path / "state.npz"))  # now its own


_BUDGET_ARTS = [{"file": "fast.int8.tflite", "engine": "litert", "precision": "int8", "batch": 1, "over_budget": True},
                {"file": "step.int8.onnx", "engine": "onnxruntime", "precision": "int8", "batch": None},
                {"file": "weights.npz", "engine": "numpy", "precision": "fp32", "batch": None}]
_BUDGET_MANIFEST = {"artifacts": _BUDGET_ARTS,
                    "latency_us": {"fast.int8.tflite": {"p50": 1.0}, "step.int8.onnx": {"p50": 50.0}}}


@pytest.mark.skipif(not {"litert", "onnxruntime"} <= set(INSTALLED),
                    reason="needs both engines: runs in .venv and .venv-device (make test)")
def test_auto_prefers_an_artifact_within_its_drift_budget():
    from runtime.forecaster import choose_artifact
    assert choose_artifact("b", _BUDGET_MANIFEST, "auto", "int8", 1)["file"] == "step.int8.onnx"


def test_an_artifact_asked_for_by_engine_is_taken_over_budget_or_not():
    from runtime.forecaster import choose_artifact
    assert choose_artifact("b", _BUDGET_MANIFEST, "litert", "int8", 1)["file"] == "fast.int8.tflite"


def test_a_kill_between_write_and_rename_leaves_the_old_state(daphnet_bundle, tmp_path):
    """save_state writes a temp file and renames it over the state: killed before the rename,
    the previous state is still there, whole."""
    state = tmp_path / "state.npz"
    fc = runtime.load(daphnet_bundle, engine="numpy")
    fc.step(_readings(daphnet_bundle, 1)[0])
    fc.save_state(str(state))
    before = state.read_bytes()
    code = (f"import os, signal, runtime\nfc = runtime.load({daphnet_bundle!r}, engine='numpy')\n"
            "fc.step([1.0] * 9); fc.step([2.0] * 9)\n"
            "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"fc.save_state({str(state)!r})\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == -9
    assert state.read_bytes() == before
    fc2 = runtime.load(daphnet_bundle, engine="numpy")
    fc2.load_state(str(state))
    assert np.array_equal(fc2.state, fc.state)


def test_step_labels_name_the_time_ahead():
    from runtime.stream import step_label
    assert [step_label(k, 600.0) for k in (1, 6, 12)] == ["+10min", "+1h", "+2h"]
    assert step_label(1, 300) == "+5min" and step_label(3, 3600) == "+3h" and step_label(1, 86400) == "+1d"
    assert step_label(2, 0.015999999999998238) == "+32ms" and step_label(3, 1 / 64) == "+46.875ms"
    assert step_label(1, 1.5) == "+1.5s" and step_label(4, None) == "+4"


def _by_the_definitions(bundle, engine, readings, times):
    """Forecasts of readings [T, B, I_raw] from the one definitions, no Forecaster: the scaler, the
    engine stepped by run_stream (its `run` adds the level), runtime.residual's deadband, the scaler back."""
    from runtime.derived import full_inputs
    from runtime.engines import open_engine, run_stream
    from runtime.forecaster import choose_artifact
    from runtime.residual import apply_deadband
    from runtime.scaler import Scaler
    m = runtime.read_manifest(bundle)
    art = choose_artifact(bundle, m, engine, "fp32", readings.shape[1])
    eng = open_engine(os.path.join(bundle, art["file"]), art, m["model"], readings.shape[1])
    x = np.stack([Scaler.from_manifest(m).normalize(full_inputs(m, r, times)) for r in readings.transpose(1, 0, 2)], 1)
    y = run_stream(eng, x)                                                        # [T, B, O], normalized
    change = y - x[..., m["model"]["residual_input"], None]
    return Scaler.from_manifest(m, "targets").denormalize(apply_deadband(y, x, m["model"])), change


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("streams", [1, 4])
@pytest.mark.parametrize("which", ["daphnet_bundle", "calendar_bundle"])
def test_the_step_inlines_the_residual_and_deadband_definitions(which, streams, engine, request):
    """Forecaster.step inlines runtime.residual (level + deadband(change)) and the scaler for speed;
    stepped over the golden readings, it gives what those definitions give over run_stream (except a
    change within float rounding of its threshold, which may fall either side)."""
    from runtime.forecaster import step_rows
    bundle = request.getfixturevalue(which)
    with np.load(os.path.join(bundle, "golden.npz")) as g:
        raw, times = g["inputs"][:300], (g["times"][:300] if "times" in g.files else None)
    readings = np.stack([np.roll(raw, 7 * k, axis=0) for k in range(streams)], axis=1)      # [T, B, I_raw]
    want, change = _by_the_definitions(bundle, engine, readings, times)
    fc = runtime.load(bundle, engine=engine, streams=streams)
    got = step_rows(fc, readings if streams > 1 else readings[:, 0], times).reshape(want.shape)
    tau, scale = np.asarray(fc.manifest["model"]["deadband"]), fc.manifest["scaler"]["targets"]["scale"][0]
    near = np.abs(np.abs(change) - tau) < 1e-4
    assert (np.abs(change) < tau).mean() > 0.05 and near.mean() < 0.01, "the deadband checks nothing here"
    assert np.max(np.abs(got - want)[~near]) <= 2e-5 * scale


def test_the_fast_input_check_still_catches_every_bad_cell(daphnet_bundle):
    """The step's usual path tests the reading against a box inside every feature's band (argmax,
    argmin); readings outside it, on either side, take the exact check."""
    r = _readings(daphnet_bundle, 1)[0].astype(np.float32)
    sc = runtime.read_manifest(daphnet_bundle)["scaler"]["inputs"]
    fc = runtime.load(daphnet_bundle, engine=NATIVE)
    for col, value, counted in [(3, sc["offset"][3] - 10 * sc["scale"][3], "out_of_range"),
                                (2, -1e30, "rejected"), (4, -np.inf, "imputed"), (5, np.inf, "imputed"),
                                (6, np.nan, "imputed"), (1, sc["offset"][1] + 10 * sc["scale"][1], "out_of_range")]:
        before, bad = fc.stats[counted], r.copy()
        bad[col] = value
        assert np.isfinite(fc.step(bad)).all() and fc.stats[counted] == before + 1, (col, value, counted)
