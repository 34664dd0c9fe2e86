"""`<bundle>.build.npz`: the streams quantize needs, written by export beside the bundle folder.

It stays on the workstation (flash copies the bundle folder only) and holds the whole prepared
series in raw units with its splits, so quantize can calibrate on the training and validation
splits and measure drift on the test split without `train`, pandas or the original CSV. A model of
many series also names each series' rows (`parts`), and quantize then sees each series normalized by
its own scaler (manifest `series`), as the device feeds the graph.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from runtime.files import atomic_write
from runtime.scaler import Scaler
from train.data import row_seconds


class BuildFileError(ValueError):
    """The build-side data is missing or belongs to another bundle."""


def build_file_path(bundle: str) -> str:
    return os.path.abspath(bundle).rstrip(os.sep) + ".build.npz"


def write_build_file(bundle: str, manifest: dict, series: dict) -> str:
    """Atomically write the series (raw inputs, horizon targets, segments, splits, MASE scale)."""
    path = build_file_path(bundle)
    meta = {"checkpoint_sha256": manifest["source"]["checkpoint_sha256"],
            "segments": [list(map(int, s)) for s in series["segments"]],
            "splits": {k: [list(map(int, r)) for r in v] for k, v in series["splits"].items()},
            "start_s": series.get("start_s"), "period_s": manifest.get("sample_period_s"),
            "shifts": [[int(r), float(sec)] for r, sec in series.get("shifts") or ()],
            "parts": [[str(p[0]), int(p[1]), int(p[2])] for p in series.get("parts") or ()],
            "part_starts_s": [p[3] for p in series.get("parts") or () if len(p) > 3]}
    with atomic_write(path) as f:
        np.savez(f, inputs=np.asarray(series["inputs"], np.float32), targets=np.asarray(series["targets"], np.float32),
                 mase_scale=np.asarray(series["mase_scale"], np.float64), meta=np.str_(json.dumps(meta)))
    return path


def reach_back(segments, a: int, b: int, n: int) -> int:
    """The start of up to n readings ending at b: a, or earlier in a's segment (of [(start, stop)])
    where [a, b) holds fewer than n (a small series' short test split for a self-test or parity,
    which score nothing; b = a: the warm-up before a scored range)."""
    return max(max(s for s, _ in segments if s <= a), min(a, b - n))


@dataclass
class BuildData:
    """The prepared series as quantize sees it: normalized inputs, raw targets, split ranges."""
    x: np.ndarray           # float32 [N, I] normalized inputs, each series' by its own scaler (NaN outside segments)
    y_raw: np.ndarray       # float32 [N, K] raw targets t+1..t+K, each series' in its own units
    segments: list
    splits: dict            # name -> [(start, stop)] forecast origins
    mase_scale: np.ndarray  # [K] in-sample k-step persistence MAE
    target_scaler: Scaler   # the pooled one
    parts: list = field(default_factory=list)     # [(series id, start, stop)] for many series, else empty
    series: dict = field(default_factory=dict)    # the manifest's `series` (each one's scalers, deadband, base)

    def split(self, name: str, longest: bool = True):
        """(x, y_raw) of one range of a split: its longest range (or its first)."""
        ranges = self.splits[name]
        a, b = max(ranges, key=lambda r: r[1] - r[0]) if longest else ranges[0]
        return self.x[a:b], self.y_raw[a:b]

    def streams(self, name: str, longest: bool = False, rows: int | None = None) -> list:
        """[(series id or None, a, b)]: each series' first (or longest) range of a split, to be streamed
        apart, each in its own scale; with `rows`, every k-th series so that at most `rows` readings
        remain (at least one series, and one series' range is never cut)."""
        parts = self.parts or [(None, 0, len(self.x))]
        out = []
        for sid, lo, hi in parts:
            ranges = [r for r in self.splits[name] if lo <= r[0] < hi]
            if ranges:
                a, b = max(ranges, key=lambda r: r[1] - r[0]) if longest else ranges[0]
                out.append((sid, a, b))
        if rows is not None and out:
            total = sum(b - a for _, a, b in out)
            out = out[::max(1, -(-total // rows))]
        return out

    def model_of(self, sid, md: dict) -> dict:
        """The manifest's model section as series `sid`'s streams run it: its own deadband and base."""
        own = {k: self.series[sid][k] for k in ("deadband", "base") if sid in self.series and self.series[sid].get(k)}
        return {**md, **own} if own else md

    def target_scaler_of(self, sid) -> Scaler:
        """Series `sid`'s target scaler (the pooled one for None)."""
        return Scaler.from_dict(self.series[sid]["targets"]) if sid in self.series else self.target_scaler

    def readings(self, names) -> np.ndarray:
        """Every reading inside the named splits, concatenated: [N, I] normalized."""
        return np.concatenate([self.x[a:b] for n in names for a, b in self.splits[n]])


def device_rows(bundle: str, manifest: dict, lo: int, hi: int):
    """Rows [lo, hi) as a device reads them: (raw readings [T, I_raw], epoch-second times [T] or None)."""
    with np.load(build_file_path(bundle), allow_pickle=False) as z:
        raw, meta = z["inputs"][lo:hi], json.loads(str(z["meta"]))
    n, d = len(manifest["features"]), manifest.get("derived_inputs")
    if not d or not d.get("inputs"):
        return raw[:, :n], None
    starts = meta.get("part_starts_s") or ()          # (build files before 2026-12-07: none)
    parts = [[*p, s0] for p, s0 in zip(meta.get("parts") or (), starts) if s0 is not None]
    wall = row_seconds(np.arange(lo, lo + len(raw)), meta["period_s"], meta["start_s"], parts, meta.get("shifts") or ())
    return raw[:, :n], wall - d.get("utc_offset_s", 0.0)


def read_build_file(bundle: str, manifest: dict) -> BuildData:
    """The build-side data for `bundle`, checked to belong to the checkpoint it was exported from."""
    path = build_file_path(bundle)
    if not os.path.isfile(path):
        raise BuildFileError(f"{path} is missing: quantize needs the calibration and test streams that "
                             f"`python -m export` writes beside the bundle; export the checkpoint again")
    try:
        with np.load(path, allow_pickle=False) as z:
            raw, y, scale, meta = z["inputs"], z["targets"], z["mase_scale"], json.loads(str(z["meta"]))
    except Exception as e:      # BadZipFile, KeyError, ValueError, ...
        raise BuildFileError(f"{path} is not a readable build file ({type(e).__name__}: {e}); export again") from None
    if meta.get("checkpoint_sha256") != manifest["source"]["checkpoint_sha256"]:
        raise BuildFileError(f"{path} was written for another checkpoint than {bundle}'s; export again")
    series = manifest.get("series") or {}
    parts = [(sid, lo, hi) for sid, lo, hi in meta.get("parts") or () if sid in series]
    return BuildData(_normalized(raw, manifest, parts), y, [tuple(s) for s in meta["segments"]],
                     {k: [tuple(r) for r in v] for k, v in meta["splits"].items()}, scale,
                     Scaler.from_manifest(manifest, "targets"), parts, series)


def _normalized(raw: np.ndarray, manifest: dict, parts: list) -> np.ndarray:
    """raw [N, I] normalized by the pooled scaler, each series' rows by its own where `parts` names them
    (a build file written before parts were recorded: the pooled scaler for every row)."""
    x = Scaler.from_manifest(manifest).normalize(raw)
    for sid, lo, hi in parts:
        x[lo:hi] = Scaler.from_dict(manifest["series"][sid]["inputs"]).normalize(raw[lo:hi])
    return x
