"""Reading and checking a bundle: manifest.json + artifacts + golden vectors.

The runtime refuses a bundle whose format is unknown, whose checksums do not match, whose
artifacts are missing, or whose shapes disagree with the manifest, and says which file and what.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

FORMAT = "gru-edge-bundle"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "int8", "int16")
# Named tolerance tiers, max abs error in normalized output units. float: the same math in
# another engine differs only by float32 rounding (~1e-6 seen). For golden vectors each artifact
# is compared with its own outputs recorded at export, so quantized artifacts get a tier that
# only allows rounding differences between CPUs, not the quantization error itself.
TIERS = {"fp32": 1e-4, "int16": 2e-3, "int8": 2e-2}


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the problem."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: str) -> dict:
    """Parse and sanity-check manifest.json (format, version, required fields)."""
    path = os.path.join(bundle, "manifest.json")
    if not os.path.isdir(bundle):
        raise BundleError(f"bundle {bundle} is not a folder")
    if not os.path.isfile(path):
        raise BundleError(f"{path} is missing: not a bundle (make one with `python -m export`)")
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{path}: format {m.get('format') if isinstance(m, dict) else None!r} is not {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: unknown format_version {m.get('format_version')!r}; "
                          f"this runtime reads version {FORMAT_VERSION}")
    missing = [k for k in ("model", "features", "scaler", "targets", "artifacts") if k not in m]
    if missing:
        raise BundleError(f"{path}: missing field(s) {', '.join(missing)}")
    model = m["model"]
    n_in = len(m["features"])
    if model.get("input_size") != n_in or len(m["scaler"]["inputs"]["offset"]) != n_in:
        raise BundleError(f"{path}: model.input_size {model.get('input_size')} disagrees with "
                          f"{n_in} features / {len(m['scaler']['inputs']['offset'])} scaler entries")
    return m


def check_artifact(bundle: str, art: dict) -> str:
    """Path of an artifact after checking it exists and its sha256 and size match."""
    path = os.path.join(bundle, art["file"])
    if not os.path.isfile(path):
        raise BundleError(f"{path}: artifact listed in the manifest is missing")
    size = os.path.getsize(path)
    if size != art["bytes"]:
        raise BundleError(f"{path}: {size} bytes, manifest says {art['bytes']} (truncated or replaced)")
    digest = sha256_file(path)
    if digest != art["sha256"]:
        raise BundleError(f"{path}: checksum mismatch (sha256 {digest[:12]}…, manifest {art['sha256'][:12]}…)")
    return path


def load_weights(path: str, md: dict) -> dict:
    """weights.npz as float32 arrays, with every shape checked against the manifest's model section."""
    i, h, o = md["input_size"], md["hidden_size"], md["output_size"]
    expected = {"head.w": (o, h), "head.b": (o,)}
    for layer in range(md["num_layers"]):
        expected.update({f"l{layer}.w_ih": (3 * h, i if layer == 0 else h), f"l{layer}.w_hh": (3 * h, h),
                         f"l{layer}.b_ih": (3 * h,), f"l{layer}.b_hh": (3 * h,)})
    with np.load(path) as z:
        weights = {k: z[k] for k in z.files}
    for name, shape in expected.items():
        if name not in weights:
            raise BundleError(f"{path}: weight {name} missing")
        if tuple(weights[name].shape) != shape:
            raise BundleError(f"{path}: {name} has shape {tuple(weights[name].shape)}, the manifest's "
                              f"model implies {shape}")
    return weights
