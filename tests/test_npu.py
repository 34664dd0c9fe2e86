"""Ethos-U with Vela: every op of the test bundles' quantized graphs lands on the NPU; the report's
figures; the manifest's `npu` section written through the one writer; the compiled file only on --out."""
import json
import os

import pytest

from conftest import copy_bundle, run_module
from export.npu import DEFAULT_ACCELERATORS, SYSTEMS, NPUError, npu_entry, npu_section
from runtime.bundle import read_manifest
from test_tflm import quantized_daphnet

KEYS = {"npu_ops", "cpu_ops", "cycles", "time_us", "sram_bytes", "flash_bytes"}
CLOCK_HZ = {"ethos-u55": 500e6, "ethos-u65": 500e6}    # the clocks of SYSTEMS in Vela's Arm/vela.ini


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, daphnet_bundle):
    return quantized_daphnet(tmp_path_factory, daphnet_bundle)


def test_every_quantized_op_lands_on_the_npu(quantized):
    section = npu_section(quantized, DEFAULT_ACCELERATORS)
    assert list(section) == list(DEFAULT_ACCELERATORS)
    for acc, files in section.items():
        assert sorted(files) == ["step.int16.tflite", "step.int8.tflite"]
        for f, e in files.items():
            assert set(e) == KEYS
            assert not e["cpu_ops"], f"{acc} {f}: ops left to the CPU: {e['cpu_ops']}"
            assert {"FULLY_CONNECTED", "LOGISTIC", "TANH", "MUL"} <= set(e["npu_ops"]), e["npu_ops"]
            assert e["cycles"] > 0 and e["sram_bytes"] > 0 and e["flash_bytes"] > 0, e
            assert e["time_us"] == pytest.approx(e["cycles"] / CLOCK_HZ[acc.rsplit("-", 1)[0]] * 1e6, rel=1e-3)
    assert json.loads(json.dumps(section)) == section


def test_a_float_graph_falls_back_to_the_cpu_op_by_op(quantized, tmp_path):
    """The check can fail: float ops are not NPU ops, and each is named with its count."""
    e, _ = npu_entry(os.path.join(quantized, "step.tflite"), "ethos-u55-128", str(tmp_path))
    assert e["npu_ops"] == {} and e["cycles"] == 0
    assert {"FULLY_CONNECTED", "LOGISTIC", "TANH", "ADD", "MUL", "SUB"} <= set(e["cpu_ops"]), e["cpu_ops"]
    assert e["cpu_ops"]["FULLY_CONNECTED"] >= 3


def test_cli_records_the_section_and_ships_vela_files_only_on_out(quantized, tmp_path):
    b = copy_bundle(quantized, tmp_path / "b")
    before = set(os.listdir(b))
    out = tmp_path / "vela"
    p = run_module("export.npu", b, "--accelerator", "ethos-u55-128", "--out", str(out))
    assert "| ethos-u55-128 | step.int8.tflite |" in p.stdout
    m = read_manifest(b)                                      # the id matches the new manifest
    assert list(m["npu"]) == ["ethos-u55-128"] and set(m["npu"]["ethos-u55-128"]["step.int8.tflite"]) == KEYS
    assert m["npu"]["ethos-u55-128"]["step.int8.tflite"]["cpu_ops"] == {}
    assert not any("vela" in f for f in os.listdir(b)) and set(os.listdir(b)) >= before
    assert sorted(os.listdir(out)) == ["step.int16.ethos-u55-128_vela.tflite", "step.int8.ethos-u55-128_vela.tflite"]
    p = run_module("export.npu", b, "--no-record")
    assert read_manifest(b)["bundle_id"] == m["bundle_id"] and "ethos-u65-256" in p.stdout


def test_bad_input_is_one_line(daphnet_bundle, tmp_path):
    p = run_module("export.npu", daphnet_bundle, "--accelerator", "ethos-u99-1", check=False)
    assert p.returncode == 2 and "unknown accelerator(s) ethos-u99-1; expected a comma-separated subset of" in p.stderr
    p = run_module("export.npu", daphnet_bundle, "--no-record", check=False)      # float only: nothing to compile
    assert p.returncode == 2 and p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1
    assert "no int8 or int16 TFLite artifact" in p.stderr and "python -m quantize" in p.stderr
    p = run_module("export.npu", str(tmp_path), check=False)
    assert p.returncode == 2 and "manifest.json is missing" in p.stderr and "Traceback" not in p.stderr
    with pytest.raises(NPUError, match="unknown accelerator"):
        npu_section(daphnet_bundle, ("ethos-u85-256",))
    assert set(SYSTEMS) == {"ethos-u55", "ethos-u65"}


def test_recording_keeps_a_signed_bundle_signed_only_with_sign(quantized, tmp_path):
    """Writing the section changes the manifest: --sign re-signs it; without, the void signature
    is removed and the command says so (never a manifest.sig that no longer verifies)."""
    import subprocess
    from runtime.trust import verify_signature
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f", str(key)], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text("ci " + " ".join((tmp_path / "key.pub").read_text().split()[:2]) + "\n")
    b = copy_bundle(quantized, tmp_path / "b")
    run_module("export.npu", b, "--accelerator", "ethos-u55-128", "--sign", str(key))
    assert verify_signature(b, str(signers)) == "ci" and "npu" in read_manifest(b)
    p = run_module("export.npu", b, "--accelerator", "ethos-u65-256")
    assert not os.path.exists(os.path.join(b, "manifest.sig")) and "manifest.sig was removed" in p.stderr
    assert list(read_manifest(b)["npu"]) == ["ethos-u65-256"]
