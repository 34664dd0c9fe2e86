"""The input and target scaling, built from a bundle's manifest (numpy only).

Mirrors train/prepare.Scaler on the workstation side: x_norm = (x - offset) / scale. Every
place outside `train/` that normalizes readings or denormalizes forecasts uses this class.
"""
from __future__ import annotations

import numpy as np


class Scaler:
    """x_norm = (x - offset) / scale, per column; float32 in and out."""

    def __init__(self, offset, scale):
        self.offset = np.asarray(offset, np.float32)
        self.scale = np.asarray(scale, np.float32)

    @staticmethod
    def from_manifest(manifest: dict, part: str = "inputs") -> "Scaler":
        """`part` is 'inputs' (one entry per feature) or 'targets' (one per target)."""
        s = manifest["scaler"][part]
        return Scaler(s["offset"], s["scale"])

    def normalize(self, x) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.offset) / self.scale).astype(np.float32)

    def denormalize(self, y) -> np.ndarray:
        return (np.asarray(y, np.float32) * self.scale + self.offset).astype(np.float32)
