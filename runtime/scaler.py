"""The input and target scaling: the one Scaler, fitted by training and applied by the device (numpy only).

x_norm = (x - offset) / scale per column, with the training split's mean and std. Training fits it
(`Scaler.fit`, train/prepare.py) and stores `to_dict()` in the checkpoint; export copies that dict
into the manifest's `scaler` section; every other place builds it with `from_manifest` or
`from_dict`. The runtime's out-of-range and reject bands read offset and scale as the training
mean and std.
"""
from __future__ import annotations

import numpy as np


class Scaler:
    """x_norm = (x - offset) / scale, per column.

    `offset` and `scale` are float32 [C] (what the device computes with); the fitted float64 values
    are kept as well, so `to_dict` stores them exactly and `normalize(x, np.float64)` computes at
    training's precision.
    """

    def __init__(self, offset, scale, kind: str = "standard"):
        self.kind = kind                                  # 'standard': the only kind `fit` makes
        self._exact = (np.asarray(offset, np.float64), np.asarray(scale, np.float64))
        self.offset = self._exact[0].astype(np.float32)
        self.scale = self._exact[1].astype(np.float32)

    @staticmethod
    def fit(x) -> "Scaler":
        """The standard scaler of x [N, C] (or [N]): per-column mean and std (in x's own dtype,
        kept as float64)."""
        x = np.asarray(x).reshape(len(x), -1)
        return Scaler(np.mean(x, axis=0), np.std(x, axis=0))

    @staticmethod
    def from_dict(d: dict) -> "Scaler":
        """From `to_dict`'s form, as stored in a checkpoint and in a manifest's scaler section."""
        return Scaler(d["offset"], d["scale"], d.get("kind", "standard"))

    @staticmethod
    def from_manifest(manifest: dict, part: str = "inputs") -> "Scaler":
        """`part` is 'inputs' (one entry per input) or 'targets' (one per target)."""
        return Scaler.from_dict(manifest["scaler"][part])

    def to_dict(self) -> dict:
        """{'kind', 'offset', 'scale'} with the exact (float64) values, JSON-ready."""
        return {"kind": self.kind, "offset": [float(v) for v in self._exact[0]],
                "scale": [float(v) for v in self._exact[1]]}

    def _at(self, dtype):
        return (self.offset, self.scale) if np.dtype(dtype) == np.float32 else self._exact

    def normalize(self, x, dtype=np.float32) -> np.ndarray:
        """(x - offset) / scale, computed and returned in `dtype` (float32 on the device; training
        computes in float64)."""
        offset, scale = self._at(dtype)
        return ((np.asarray(x, dtype) - offset) / scale).astype(dtype, copy=False)

    def denormalize(self, y, dtype=np.float32) -> np.ndarray:
        """y * scale + offset, computed and returned in `dtype`."""
        offset, scale = self._at(dtype)
        return (np.asarray(y, dtype) * scale + offset).astype(dtype, copy=False)
