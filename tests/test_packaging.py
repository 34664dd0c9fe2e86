"""Two distributions from one checkout: gru-edge-runtime (the device's `runtime` package and the `gru-edge`
command) and gru-edge (the workstation tools, pinning the runtime at the same version)."""
import csv
import json
import os
import subprocess
import sys
import tomllib
import zipfile

import numpy as np
import pytest

from conftest import ROOT
from flash.deploy import build_wheels

RUNTIME_EXTRAS = {"onnx", "litert", "legacy", "mqtt", "serial"}
WORKSTATION_EXTRAS = {"train", "export", "fleet", "cluster", "mcu", "compare", "docs", "dev"}
WHEELHOUSE = os.path.join(ROOT, "build", "packaging-wheelhouse")   # numpy + onnxruntime, fetched once


def _project(path):
    with open(os.path.join(ROOT, path, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    return build_wheels(str(tmp_path_factory.mktemp("dist")))


def _metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(info).decode()
        entry = next((z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
    return names, meta, entry


def test_versions_and_pins_agree():
    rt, ws = _project("packaging/runtime"), _project(".")
    assert rt["version"] == ws["version"]
    assert f"gru-edge-runtime=={rt['version']}" in ws["dependencies"]
    assert rt["dependencies"] == ["numpy>=1.24"] and rt["requires-python"] == ">=3.9"
    assert set(rt["optional-dependencies"]) == RUNTIME_EXTRAS
    assert set(ws["optional-dependencies"]) == WORKSTATION_EXTRAS
    assert "mkdocs-material==9.8.1" in ws["optional-dependencies"]["docs"]


def test_runtime_wheel_holds_the_runtime_package_only(wheels):
    rt, ws = wheels
    assert os.path.basename(rt).startswith("gru_edge_runtime-") and os.path.basename(ws).startswith("gru_edge-")
    names, meta, entry = _metadata(rt)
    dist_info = [n for n in names if not n.startswith("runtime/")]
    assert dist_info and all(n.startswith("gru_edge_runtime-") and ".dist-info/" in n for n in dist_info), dist_info
    for needed in ("runtime/__init__.py", "runtime/cli.py", "runtime/manifest.schema.json",
                   "runtime/service/__init__.py"):
        assert needed in names
    assert "gru-edge = runtime.cli:main" in entry
    assert "Requires-Dist: numpy>=1.24" in meta and "Requires-Python: >=3.9" in meta
    assert not [r for r in meta.splitlines() if r.startswith("Requires-Dist:") and "torch" in r]
    names, meta, entry = _metadata(ws)
    assert not [n for n in names if n.startswith("runtime/")], "the workstation wheel carries the runtime"
    assert {n.split("/")[0] for n in names if "/" in n and ".dist-info" not in n} == \
        {"train", "export", "quantize", "bench", "flash"}
    assert "Requires-Dist: gru-edge-runtime==" in meta and "gru-edge =" not in entry


def _fresh_venv(where):
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    return os.path.join(where, "bin")


def _wheelhouse():
    os.makedirs(WHEELHOUSE, exist_ok=True)
    if not any(n.startswith("onnxruntime-") for n in os.listdir(WHEELHOUSE)):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", WHEELHOUSE,
                        "numpy", "onnxruntime==1.32.0"], check=True, timeout=600)
    return WHEELHOUSE


def _run(bindir, *args, cwd):
    p = subprocess.run([os.path.join(bindir, args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    return p


def test_runtime_wheel_installs_alone_offline_and_streams(wheels, daphnet_bundle, tmp_path):
    house = _wheelhouse()
    bindir = _fresh_venv(tmp_path / "device")
    p = _run(bindir, "python", "-m", "pip", "install", "-q", "--no-index", "--find-links", house,
             "--find-links", os.path.dirname(wheels[0]), "gru-edge-runtime[onnx]", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    where = _run(bindir, "python", "-c", "import runtime, importlib.util as u; print(runtime.__file__); "
                 "print([m for m in ('train', 'export', 'flash', 'quantize', 'bench', 'torch') if u.find_spec(m)])",
                 cwd=tmp_path).stdout.splitlines()
    assert where[0].startswith(str(tmp_path / "device")) and where[1] == "[]", where
    assert "gru-edge-runtime 0.1.0 (device only" in _run(bindir, "gru-edge", "--version", cwd=tmp_path).stdout
    listing = _run(bindir, "gru-edge", "--help", cwd=tmp_path).stdout
    assert all(f"  {s} " in listing for s in ("stream", "verify", "serve", "train", "flash")) and "NOT INSTALLED" in listing

    verified = _run(bindir, "gru-edge", "verify", daphnet_bundle, cwd=tmp_path)
    assert verified.returncode == 0 and "ok" in verified.stdout, verified.stdout + verified.stderr
    with np.load(daphnet_bundle + ".build.npz") as z:
        x = z["inputs"][-50:]
    features = [f["name"] for f in json.load(open(os.path.join(daphnet_bundle, "manifest.json")))["features"]]
    src = tmp_path / "readings.csv"
    with open(src, "w", newline="") as f:
        csv.writer(f).writerows([features] + [[repr(float(v)) for v in r] for r in x])
    out = tmp_path / "forecast.csv"
    streamed = _run(bindir, "gru-edge", "stream", daphnet_bundle, "--engine", "onnxruntime", "--input", str(src),
                    "--output", str(out), cwd=tmp_path)
    assert streamed.returncode == 0, streamed.stderr
    assert np.loadtxt(out, delimiter=",", skiprows=1).shape[0] == len(x)

    for sub, extra in (("train", "gru-edge[train]"), ("flash", "gru-edge"), ("fleet", "gru-edge[fleet]")):
        p = _run(bindir, "gru-edge", sub, "--help", cwd=tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and f"pip install '{extra}'" in lines[0], p.stderr


def test_one_command_dispatches_to_the_modules():
    gru = [sys.executable, "-m", "runtime.cli"]
    for sub, prog in (("stream", "gru-edge stream"), ("train", "gru-edge train"), ("serve", "gru-edge serve"),
                      ("quantize", "gru-edge quantize"), ("fleet", "gru-edge fleet"), ("npu", "gru-edge npu"),
                      ("mcu", "gru-edge mcu"), ("collect", "gru-edge collect"), ("flash", "gru-edge flash")):
        p = subprocess.run([*gru, sub, "--help"], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert p.returncode == 0 and p.stdout.startswith(f"usage: {prog} "), (sub, p.stdout[:200], p.stderr[-500:])
    p = subprocess.run([sys.executable, "-m", "train", "--help"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.stdout.startswith("usage: python -m train ")               # the module form names itself
    p = subprocess.run([*gru, "frobnicate"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "expected one of: stream" in p.stderr
    v = subprocess.run([*gru, "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    assert v.startswith("gru-edge-runtime 0.1.0 (workstation gru-edge 0.1.0)")


def test_docs_build_strict_from_the_code(tmp_path):
    """make docs: the generated pages, then a strict MkDocs build (a broken link or a missing page fails)."""
    gen = subprocess.run([sys.executable, "docs/gen.py"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert gen.returncode == 0, gen.stderr[-2000:]
    cli = open(os.path.join(ROOT, "docs", "reference", "cli.md")).read()
    assert "## `gru-edge train`" in cli and "usage: gru-edge train" in cli and "--horizon" in cli
    toml = open(os.path.join(ROOT, "docs", "reference", "device-toml.md")).read()
    from runtime.service.config import SCHEMA
    assert all(f"| `{k}` |" in toml for keys in SCHEMA.values() for k in keys)
    results = open(os.path.join(ROOT, "docs", "results.md")).read()
    bench = json.load(open(os.path.join(ROOT, "bench", "results.json")))
    assert bench["machine"]["date"] in results and "make bench" in results and "python -m bench.datasets" in results
    site = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert site.returncode == 0, site.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli.html").exists() and (tmp_path / "site" / "index.html").exists()
