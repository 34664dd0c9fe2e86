"""TFLite Micro: every TFLite artifact of the test bundles in the real TFLM interpreter, closed loop
over real readings, against LiteRT within the tiers; the arena it needs; the op it cannot run."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import copy_bundle, reseal, run_module
from export.buildfile import read_build_file
from export.tflm import (MIN_STEPS, TFLMEngine, TFLMError, captured_output, measure_section, needed_arena, over_tier,
                         parity_readings, table, tflm_section)
from export.writer import BundleWriter
from runtime.bundle import TIERS, read_manifest, sha256_file

TFLITE = ("step.tflite", "step.int8.tflite", "step.int16.tflite")


def quantized_daphnet(tmp_path_factory, daphnet_bundle) -> str:
    """The Daphnet test bundle with int8 and int16 TFLite artifacts, built once per session
    (python -m quantize as the Makefile's daphnet_q, both activation precisions)."""
    dst = tmp_path_factory.getbasetemp() / "daphnet_q16"
    if not (dst / "manifest.json").exists():
        shutil.rmtree(dst, ignore_errors=True)
        copy_bundle(daphnet_bundle, dst)
        run_module("quantize", str(dst), "--activations", "int8,int16", "--samples", "500", "--allow-drift")
    return str(dst)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, daphnet_bundle):
    return quantized_daphnet(tmp_path_factory, daphnet_bundle)


@pytest.fixture(scope="module")
def section(quantized):
    return tflm_section(quantized, steps=1000)


def test_every_tflite_artifact_matches_litert_within_its_tier(quantized, section):
    m = read_manifest(quantized)
    assert sorted(section) == sorted(TFLITE)
    for f, v in section.items():
        assert set(v) == {"arena_bytes", "max_abs_err", "steps"}
        assert v["steps"] >= MIN_STEPS
        assert isinstance(v["arena_bytes"], int) and 1024 < v["arena_bytes"] < 64 * 1024, (f, v)
        assert json.loads(json.dumps(v)) == v            # what the manifest will hold
    assert over_tier(section, m) == []
    assert section["step.tflite"]["max_abs_err"] <= 1e-5        # the same float math (~5e-7 seen)
    assert table(section).count("\n| step.") == 3


def test_the_section_goes_into_the_manifest_through_the_writer(quantized, section, tmp_path):
    """How quantize records it: measured in the writer's folder before close, read back by later checks."""
    b = copy_bundle(quantized, tmp_path / "b")
    data = read_build_file(b, read_manifest(b))
    with BundleWriter(b, base=b) as w:
        w.manifest["tflm"] = measure_section(w.tmp, w.manifest, parity_readings(data, 1000))
    assert read_manifest(b)["tflm"] == section


def test_arena_is_the_smallest_that_runs(quantized, section):
    for f in TFLITE:
        model = open(os.path.join(quantized, f), "rb").read()
        need = section[f]["arena_bytes"]
        TFLMEngine(model, need).invoke()
        out = []
        with captured_output(out), pytest.raises(RuntimeError):
            TFLMEngine(model, need - 1).invoke()
        assert out[0].strip(), "TFLM refused a too-small arena without saying why"   # e.g. 'Too many buffers'



def test_over_tier_names_the_artifact(quantized, section):
    m = read_manifest(quantized)
    worse = {f: {**v, "max_abs_err": TIERS["int8"] * 1.5} for f, v in section.items()}
    lines = over_tier(worse, m)
    assert any(ln.startswith("step.int8.tflite:") and "int8 tier" in ln for ln in lines), lines
    assert any(ln.startswith("step.tflite:") for ln in lines)


def _replace_op(model: bytes, old: str, new: str) -> bytes:
    """The same graph with every `old` op recoded as builtin `new` (one TFLM has no kernel for)."""
    import flatbuffers
    from tflite_micro.python.tflite_micro import runtime as tflm
    ops = tflm.schema_fb.BuiltinOperator
    m = tflm.convert_bytearray_to_object(bytearray(model))
    for oc in m.operatorCodes:
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == getattr(ops, old):
            oc.builtinCode, oc.deprecatedBuiltinCode = getattr(ops, new), min(getattr(ops, new), 127)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_an_op_tflm_cannot_run_is_named(tmp_path, daphnet_bundle):
    b = copy_bundle(daphnet_bundle, tmp_path / "b")
    path = os.path.join(b, "step.tflite")
    bad = _replace_op(open(path, "rb").read(), "TANH", "MATRIX_DIAG")
    with pytest.raises(TFLMError, match="model: TFLite Micro has no kernel for op MATRIX_DIAG"):
        needed_arena(bad)
    open(path, "wb").write(bad)                     # the same through a (re-sealed) bundle
    m = read_manifest(daphnet_bundle)
    art = next(a for a in m["artifacts"] if a["file"] == "step.tflite")
    art.update(sha256=sha256_file(path), bytes=os.path.getsize(path))
    reseal(b, m)
    with pytest.raises(TFLMError, match=r"^step\.tflite: TFLite Micro has no kernel for op MATRIX_DIAG"):
        tflm_section(b, steps=MIN_STEPS)


def test_too_few_steps_or_readings_is_one_clear_error(daphnet_bundle, tmp_path):
    with pytest.raises(ValueError, match="at least 500"):
        tflm_section(daphnet_bundle, steps=100)
    assert tflm_section(daphnet_bundle, steps=100_000)["step.tflite"]["steps"] >= MIN_STEPS   # all there is
    b = copy_bundle(daphnet_bundle, tmp_path / "b")               # a build file whose test split is short:
    with np.load(b + ".build.npz") as z:                          # its segment's earlier readings make up the rest
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    start = meta["splits"]["test"][0][0]
    meta["splits"]["test"] = [[start, start + 300]]
    np.savez(b + ".build.npz", **{**arrays, "meta": np.str_(json.dumps(meta))})
    assert tflm_section(b, steps=MIN_STEPS)["step.tflite"]["steps"] == MIN_STEPS
    meta["segments"] = [[start, start + 300]]                     # and a segment that short: too few
    np.savez(b + ".build.npz", **{**arrays, "meta": np.str_(json.dumps(meta))})
    with pytest.raises(TFLMError, match="longest range and its segment have 300 finite readings; TFLM parity needs 500"):
        tflm_section(b)


def test_a_float_only_bundle_has_its_one_batch1_artifact(daphnet_bundle):
    """Before quantize: step.tflite alone (step.b4.tflite is a batch-4 graph, no MCU artifact)."""
    s = tflm_section(daphnet_bundle, steps=MIN_STEPS)
    assert list(s) == ["step.tflite"] and s["step.tflite"]["steps"] == MIN_STEPS
    assert np.isfinite(s["step.tflite"]["max_abs_err"]) and s["step.tflite"]["max_abs_err"] <= TIERS["fp32"]


def test_quantize_records_the_tflm_section(quantized):
    """python -m quantize measures every batch-1 TFLite artifact (float and quantized) as it adds them."""
    m = read_manifest(quantized)
    assert sorted(m["tflm"]) == sorted(TFLITE)
    for f, v in m["tflm"].items():
        assert set(v) == {"arena_bytes", "max_abs_err", "steps"} and v["steps"] == 1000, (f, v)
    assert over_tier(m["tflm"], m) == []
    report = open(os.path.join(quantized, "REPORT.md"), encoding="utf-8").read()
    assert "## TensorFlow Lite Micro" in report and table(m["tflm"]) in report


def test_requantizing_leaves_no_stale_tflm_or_npu_entries(quantized, tmp_path):
    """A re-quantize that replaces step.int8.tflite and drops step.int16.tflite: neither section may
    still describe the old files."""
    b = copy_bundle(quantized, tmp_path / "b")
    entry = {"npu_ops": {"ethos-u": 1}, "cpu_ops": {}, "cycles": 1, "time_us": 0.1, "sram_bytes": 1, "flash_bytes": 1}
    with BundleWriter(b, base=b) as w:
        w.manifest["npu"] = {"ethos-u55-128": {"step.int8.tflite": entry, "step.int16.tflite": entry}}
    run_module("quantize", b, "--formats", "tflite", "--activations", "int8", "--samples", "300", "--allow-drift")
    m = read_manifest(b)
    assert sorted(m["tflm"]) == ["step.int8.tflite", "step.tflite"], m["tflm"]
    assert "npu" not in m, m.get("npu")
    assert "step.int16.tflite" not in open(os.path.join(b, "REPORT.md"), encoding="utf-8").read()


def test_an_artifact_tflm_cannot_run_is_recorded_not_a_crash(tmp_path, daphnet_bundle):
    from quantize.pipeline import record_tflm
    b = copy_bundle(daphnet_bundle, tmp_path / "b")
    w = BundleWriter(b, base=b)
    try:
        bad = _replace_op(open(w.path("step.tflite"), "rb").read(), "TANH", "MATRIX_DIAG")
        open(w.path("step.tflite"), "wb").write(bad)
        warnings = record_tflm(w, read_build_file(b, w.manifest))
        assert len(warnings) == 1 and warnings[0].startswith("step.tflite: TFLite Micro has no kernel for op MATRIX_DIAG")
        assert w.manifest["tflm"] == {"step.tflite": {"error": warnings[0]}}
        assert "does not run: step.tflite: TFLite Micro has no kernel for op MATRIX_DIAG" in table(w.manifest["tflm"])
    finally:
        w.discard()
