"""Device self-test: checksums, then the golden vectors through every installed engine."""
from __future__ import annotations

import os

import numpy as np

from .bundle import TIERS, BundleError, check_artifact, read_manifest, sha256_file
from .engines import available_engines
from .forecaster import load


def verify(bundle: str) -> list[dict]:
    """One row per artifact: engine, precision, status ('ok', 'FAIL', 'skipped') and max error.

    Raises:
        BundleError: the manifest or a checksum is wrong (nothing else is run then).
    """
    m = read_manifest(bundle)
    for art in m["artifacts"]:
        check_artifact(bundle, art)
    g = m["golden"]
    gpath = os.path.join(bundle, g["file"])
    if not os.path.isfile(gpath) or sha256_file(gpath) != g["sha256"]:
        raise BundleError(f"{gpath}: golden vectors missing or checksum mismatch")
    installed = available_engines()
    scale = m["scaler"]["targets"]["scale"][0]
    offset = m["scaler"]["targets"]["offset"][0]
    rows = []
    with np.load(gpath) as z:
        inputs = z["inputs"]
        expected = {k[2:]: z[k] for k in z.files if k.startswith("y/")}
    for art in m["artifacts"]:
        row = {"file": art["file"], "engine": art["engine"], "precision": art["precision"]}
        if art["file"] not in expected:
            rows.append({**row, "status": "skipped", "why": f"batch {art['batch']}: golden vectors are batch 1"})
            continue
        if art["engine"] not in installed:
            rows.append({**row, "status": "skipped", "why": f"{art['engine']} is not installed"})
            continue
        fc = load(bundle, engine=art["engine"], precision=art["precision"], nan_policy="raise")
        got = np.stack([fc.step(r) for r in inputs])
        err = float(np.max(np.abs((got - offset) / scale - expected[art["file"]])))
        tier = TIERS[art["precision"]]
        rows.append({**row, "status": "ok" if err <= tier else "FAIL", "max_abs_err": err, "tier": tier})
    return rows
