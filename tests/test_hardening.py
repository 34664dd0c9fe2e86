"""Trust on the device: crafted bundles, corrupt state, hostile CSV input, absurd readings.

Each case was a real defect of the first round (issue 11); each test failed on that code.
Runs in the torch-free device venvs too (bundles prebuilt by `make test`).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import runtime
from conftest import ROOT, reseal, run_module
from runtime.bundle import TIERS, BundleError
from runtime.engines import available_engines

INSTALLED = available_engines()


def _copy(src, tmp_path, name="b"):
    out = tmp_path / name
    shutil.copytree(src, out)
    return str(out), json.load(open(out / "manifest.json"))


def _readings(bundle, n):
    with np.load(os.path.join(bundle, "golden.npz")) as g:
        return np.resize(g["inputs"], (n, g["inputs"].shape[1]))


# -- bundles: what is loaded is exactly what was built ---------------------------------------
def test_an_edited_scaler_is_caught_by_load_and_verify(daphnet_bundle, tmp_path):
    """+10 on the target offset shifted every forecast and still verified; now the id catches it,
    and with the id made to match, the raw-unit golden check does."""
    b, m = _copy(daphnet_bundle, tmp_path)
    m["scaler"]["targets"]["offset"][0] += 10.0
    json.dump(m, open(os.path.join(b, "manifest.json"), "w"))
    p = run_module("runtime", "verify", b, check=False)
    assert p.returncode == 2 and "does not match the manifest's content" in p.stderr
    reseal(b, m)
    p = run_module("runtime", "verify", b, check=False)
    assert p.returncode == 1 and "FAIL" in p.stdout and "weights.npz" in p.stdout


@pytest.mark.parametrize("file", ["../../../etc/passwd", "/etc/passwd", "sub/weights.npz", "..", ""])
def test_artifact_paths_must_be_plain_names(daphnet_bundle, tmp_path, file):
    b, m = _copy(daphnet_bundle, tmp_path)
    m["artifacts"][0]["file"] = file
    reseal(b, m)
    with pytest.raises(BundleError, match=r"artifacts\[0\].file.* is not a plain file name"):
        runtime.load(b, engine="numpy")


def test_a_symlinked_artifact_is_refused(daphnet_bundle, tmp_path):
    b, m = _copy(daphnet_bundle, tmp_path)
    shutil.move(os.path.join(b, "weights.npz"), tmp_path / "elsewhere.npz")
    os.symlink(tmp_path / "elsewhere.npz", os.path.join(b, "weights.npz"))
    with pytest.raises(BundleError, match="is a symbolic link"):
        runtime.load(b, engine="numpy")


MALFORMED = [
    (lambda m: m.update(artifacts=None), "field 'artifacts' is NoneType"),
    (lambda m: m["artifacts"][0].pop("file"), r"field 'artifacts\[0\].file' is missing"),
    (lambda m: m["model"].pop("hidden_size"), "field 'model.hidden_size' is missing"),
    (lambda m: m.pop("golden"), "field 'golden' is missing"),
    (lambda m: m["model"].update(residual_input=99), "field 'model.residual_input' is 99; expected an input index"),
    (lambda m: m["scaler"]["inputs"]["offset"].pop(), r"field 'scaler.inputs.offset' has 8 entries; expected 9"),
    (lambda m: m["scaler"]["inputs"]["scale"].__setitem__(2, 0.0), r"'scaler.inputs.scale\[2\]' is 0.0; expected > 0"),
    (lambda m: m.update(artifacts=[]), "field 'artifacts' is empty"),
    (lambda m: m["features"][1].update(name=m["features"][0]["name"]), "names ankle_horiz_fwd more than once"),
    (lambda m: m.update(model="big"), "field 'model' is str"),
]


@pytest.mark.parametrize("edit, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_manifests_give_one_clear_error(daphnet_bundle, tmp_path, edit, message):
    b, m = _copy(daphnet_bundle, tmp_path)
    edit(m)
    reseal(b, m)
    with pytest.raises(BundleError, match=message):
        runtime.load(b, engine="numpy")
    p = run_module("runtime", "verify", b, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "manifest.json: field" in p.stderr


def test_a_bundle_made_before_the_unit_rule_still_loads_with_a_long_unit(daphnet_bundle, tmp_path):
    """train and collect now write units of at most 64 characters; a bundle made before with a longer
    (printable) one must still load."""
    b, m = _copy(daphnet_bundle, tmp_path)
    m["features"][2]["unit"] = "milli-g, as the logger's datasheet names it, in its own long words x"
    reseal(b, m)
    assert runtime.load(b, engine="numpy").manifest["features"][2]["unit"].startswith("milli-g")


def test_a_version_1_bundle_is_still_read(two_layer_bundle, tmp_path):
    """The landed format: id over the artifacts only, golden outputs normalized under 'y/' (of a
    level model, as every version-1 bundle is)."""
    from runtime.bundle import legacy_bundle_id
    b, m = _copy(two_layer_bundle, tmp_path)
    t = m["scaler"]["targets"]
    g = os.path.join(b, "golden.npz")
    with np.load(g) as z:
        old = {"inputs": z["inputs"], **{"y/" + k[9:]: (z[k] - t["offset"][0]) / t["scale"][0]
                                         for k in z.files if k.startswith("forecast/")}}
    np.savez(g, **old)
    from runtime.bundle import sha256_file
    m["golden"].update(sha256=sha256_file(g), bytes=os.path.getsize(g))
    for f, sc in zip(m["features"], zip(m["scaler"]["inputs"]["offset"], m["scaler"]["inputs"]["scale"])):
        f.update(train_mean=sc[0], train_std=sc[1])
    m["format_version"] = 1
    m["bundle_id"] = legacy_bundle_id(m)
    json.dump(m, open(os.path.join(b, "manifest.json"), "w"))
    p = run_module("runtime", "verify", b)
    assert "FAIL" not in p.stdout and p.stdout.count("ok ") >= 1
    assert runtime.load(b, engine="numpy").step(old["inputs"][0]).shape == (6,)


# -- the state file never crash-loops the stream ----------------------------------------------
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"\x93NUMPY not really", None])
def test_corrupt_state_is_moved_aside_and_streaming_goes_on(daphnet_bundle, tmp_path, content):
    state = tmp_path / "state.npz"
    if content is None:           # a real npz of the wrong kind: a state of another shape
        np.savez(state, state=np.zeros((3, 3)), last=np.zeros(3),
                 bundle_id=np.str_(runtime.read_manifest(daphnet_bundle)["bundle_id"]))
    else:
        state.write_bytes(content)
    fc = runtime.load(daphnet_bundle, engine="numpy")
    with pytest.raises(ValueError, match="state"):
        fc.load_state(str(state))
    feats = [f["name"] for f in fc.manifest["features"]]
    (tmp_path / "in.csv").write_text(",".join(feats) + "\n" + "\n".join(",".join(map(str, r))
                                     for r in _readings(daphnet_bundle, 3)) + "\n")
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(tmp_path / "in.csv"), "--state", str(state))
    assert "moved it to" in p.stderr and len(p.stdout.strip().splitlines()) == 4
    assert [f for f in os.listdir(tmp_path) if f.startswith("state.npz.corrupt-")]
    runtime.load(daphnet_bundle, engine="numpy").load_state(str(state))      # a good state again


def test_impossible_states_are_refused_with_the_right_reason(daphnet_bundle):
    fc = runtime.load(daphnet_bundle, engine="numpy")
    with pytest.raises(ValueError, match=r"a GRU state lies in \[-1, 1\]"):
        fc.state = np.full(fc.state.shape, 3.0)
    with pytest.raises(ValueError, match="non-finite value") as e:
        fc.state = np.full(fc.state.shape, np.nan)
    assert "shape" not in str(e.value)


# -- stream: never loses data -----------------------------------------------------------------
def _csv(bundle, n=4, order=None, sep=","):
    feats = [f["name"] for f in runtime.read_manifest(bundle)["features"]]
    rows = [sep.join(["time"] + feats)]
    rows += [sep.join([f"t{i}"] + [repr(float(v)) for v in r]) for i, r in enumerate(_readings(bundle, n))]
    return "\n".join(rows) + "\n"


def test_output_is_appended_never_truncated(daphnet_bundle, tmp_path):
    out, inp = tmp_path / "f.csv", tmp_path / "in.csv"
    inp.write_text(_csv(daphnet_bundle, 5))
    for _ in range(2):          # a service restart: the same --output
        run_module("runtime", "stream", daphnet_bundle, "--input", str(inp), "--output", str(out))
    lines = out.read_text().splitlines()
    assert len(lines) == 11 and lines[0].startswith("time,ankle_horiz_fwd+15.625ms") and lines.count(lines[0]) == 1
    legacy = out.read_text().replace("+15.625ms", "+1").replace("+31.25ms", "+2").replace("+46.875ms", "+3") \
        .replace("+62.5ms", "+4").replace("+78.125ms", "+5").replace("+93.75ms", "+6")
    out.write_text(legacy)      # a file from before the step labels: same columns, appended to
    run_module("runtime", "stream", daphnet_bundle, "--input", str(inp), "--output", str(out))
    assert out.read_text().startswith(legacy) and len(out.read_text().splitlines()) == 16
    out.write_text("something,else\n1,2\n")
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(inp), "--output", str(out), check=False)
    assert p.returncode == 2 and "exists with another header" in p.stderr
    assert out.read_text() == "something,else\n1,2\n"


def test_input_as_output_is_refused(daphnet_bundle, tmp_path):
    inp = tmp_path / "in.csv"
    inp.write_text(_csv(daphnet_bundle))
    before = inp.read_text()
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(inp), "--output", str(inp), check=False)
    assert p.returncode == 2 and "is the input file" in p.stderr and inp.read_text() == before


def test_hostile_csv_input(daphnet_bundle, tmp_path):
    """A BOM, a 200 KiB field, a wrong delimiter, a duplicated column, a non-UTF-8 line, a UTF-16 file."""
    inp = tmp_path / "in.csv"
    text = _csv(daphnet_bundle, 4)
    inp.write_bytes(b"\xef\xbb\xbf" + text.encode())
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(inp))
    assert len(p.stdout.strip().splitlines()) == 5
    lines = text.splitlines()
    inp.write_text("\n".join(lines[:2] + ["x" * 200_000 + ",1"] + lines[2:]) + "\n")
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(inp))
    assert len(p.stdout.strip().splitlines()) == 5 and "line 3: 200003 bytes" in p.stderr
    assert json.loads(p.stderr.strip().splitlines()[-1])["skipped_lines"] == 1
    inp.write_text(_csv(daphnet_bundle, 3, sep=";"))          # no flag: the delimiter that finds every feature
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(inp), "--delimiter", ",", check=False)
    assert p.returncode == 2 and "pass --delimiter ';'" in p.stderr
    for flags in ((), ("--delimiter", ";")):
        p = run_module("runtime", "stream", daphnet_bundle, "--input", str(inp), *flags)
        assert len(p.stdout.strip().splitlines()) == 4
    inp.write_text(lines[0] + ",ankle_vert\n" + lines[1] + ",1\n")
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(inp), check=False)
    assert p.returncode == 2 and "ankle_vert appear more than once" in p.stderr
    out = tmp_path / "out.csv"
    inp.write_bytes(("\n".join(lines[:3]) + "\n").encode() + b"t9,\xff\xfe\n" + (lines[3] + "\n").encode())
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(inp), "--output", str(out), check=False)
    assert p.returncode == 2 and "line 4: not UTF-8" in p.stderr and "Traceback" not in p.stderr
    assert len(out.read_text().splitlines()) == 3            # the header and the two rows before it
    inp.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))         # Excel's "Unicode text"
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(inp), check=False)
    assert p.returncode == 2 and "line 1: not UTF-8" in p.stderr and "save it as 'CSV UTF-8'" in p.stderr


# -- one answer on every engine for absurd readings -------------------------------------------
@pytest.mark.parametrize("engine", [e for e in ("numpy", "onnxruntime", "litert") if e in INSTALLED])
def test_absurd_readings_give_the_same_forecasts_on_every_engine(daphnet_bundle, engine):
    r = _readings(daphnet_bundle, 40).astype(np.float64)
    for t, v in ((5, np.nan), (9, np.inf), (13, -np.inf), (17, 1e30), (21, 1e39), (25, -1e30)):
        r[t, t % 9] = v
    ref, fc = runtime.load(daphnet_bundle, engine="numpy"), runtime.load(daphnet_bundle, engine=engine)
    clean = runtime.load(daphnet_bundle, engine="numpy")
    with np.errstate(over="ignore"):
        got = np.stack([fc.step(x) for x in r])
        want = np.stack([ref.step(x) for x in r])
    assert np.isfinite(got).all() and fc.stats["state_resets"] == 0
    assert fc.stats["imputed"] == 6 and fc.stats["rejected"] == 2
    tol = TIERS["fp32"] * fc.manifest["scaler"]["targets"]["scale"][0]
    assert np.max(np.abs(got - want)) <= tol
    held = r.copy()                                   # what 'hold' means: the last good value
    for t in (5, 9, 13, 17, 21, 25):
        held[t, t % 9] = held[t - 1, t % 9]
    assert np.max(np.abs(np.stack([clean.step(x) for x in held]) - want)) <= tol


def test_runtime_imports_stay_on_the_device_side_for_the_new_modules():
    code = ("import sys, runtime.stream, runtime.verify, runtime.scaler\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'onnx', 'train', 'export', 'quantize', 'pandas', 'jsonschema')))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"
