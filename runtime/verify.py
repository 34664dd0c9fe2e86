"""Device self-test: the manifest and checksums, then the golden vectors through every installed engine."""
from __future__ import annotations

import numpy as np

from .bundle import TIERS, check_artifact, check_golden, read_manifest
from .engines import available_engines
from .forecaster import load, step_rows
from .scaler import Scaler


def golden_expectations(path: str, manifest: dict):
    """(raw readings [T, I_raw], {file: expected forecast in raw units [T, O]}, times [T] or None).

    Version 2 stores the forecasts in raw units ('forecast/<file>'), so an edited scaler cannot
    cancel itself out; version 1 stored normalized outputs ('y/<file>'), denormalized here.
    """
    with np.load(path, allow_pickle=False) as z:
        inputs, times = z["inputs"], (z["times"] if "times" in z.files else None)
        if any(k.startswith("forecast/") for k in z.files):
            return inputs, {k[len("forecast/"):]: z[k] for k in z.files if k.startswith("forecast/")}, times
        out = Scaler.from_manifest(manifest, "targets")
        return inputs, {k[2:]: out.denormalize(z[k]) for k in z.files if k.startswith("y/")}, times


def verify(bundle: str) -> list[dict]:
    """One row per artifact: engine, precision, status ('ok', 'FAIL', 'skipped') and max error.

    The error is in normalized output units (raw error / the target's scale), against the tier.

    Raises:
        BundleError: the manifest, a file name or a checksum is wrong (nothing else is run then).
    """
    m = read_manifest(bundle)
    for art in m["artifacts"]:
        check_artifact(bundle, art)
    inputs, expected, times = golden_expectations(check_golden(bundle, m), m)
    installed = available_engines()
    scale = m["scaler"]["targets"]["scale"][0]
    rows = []
    for art in m["artifacts"]:
        row = {"file": art["file"], "engine": art["engine"], "precision": art["precision"]}
        if art["file"] not in expected:
            rows.append({**row, "status": "skipped", "why": f"batch {art['batch']}: golden vectors are batch 1"})
            continue
        if art["engine"] not in installed:
            rows.append({**row, "status": "skipped", "why": f"{art['engine']} is not installed"})
            continue
        fc = load(bundle, engine=art["engine"], precision=art["precision"], nan_policy="raise", deadband=False)
        got = step_rows(fc, inputs, times)
        err = float(np.max(np.abs(got - expected[art["file"]]))) / scale
        if not np.isfinite(err):
            err = float("inf")
        tier = TIERS[art["precision"]]
        rows.append({**row, "status": "ok" if err <= tier else "FAIL", "max_abs_err": err, "tier": tier})
    return rows
