"""Checkpoints: tensors and plain data only, loadable with `torch.load(weights_only=True)`."""
from __future__ import annotations

import os

import torch

from runtime.files import atomic_write
from .model import RecurrentConfig, RecurrentModel

FORMAT = "gru-edge-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign, or disagrees with its own config."""


def plain(obj):
    """Recursively turn numpy scalars/arrays and tuples into plain Python data."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def write_atomically(path: str, write, mode: str = "wb") -> None:
    """Call write(file) on a file that replaces `path` atomically (runtime/files.atomic_write); creates folders."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, mode) as f:
        write(f)


def save_checkpoint(path: str, model: RecurrentModel, meta: dict) -> None:
    """Write atomically (temp file in the same folder, fsync, rename); creates folders."""
    blob = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **plain(meta)}
    write_atomically(path, lambda f: torch.save(blob, f))


def load_checkpoint(path: str):
    """Returns (model in eval mode, the checkpoint dict).

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with objects, random bytes...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = [ln for ln in lines if "Unpickler error" in ln] or lines or [type(e).__name__]
        reason = why[0][:200]
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt, truncated or not made by "
                              f"`python -m train`): {reason}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file (a foreign checkpoint?); "
                              "make one with `python -m train`")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {blob.get('version')}; this tool reads {VERSION}")
    try:
        cfg = RecurrentConfig.from_dict(blob["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from None
    model = RecurrentModel(cfg)
    expected = model.state_dict()
    sd = blob.get("state_dict", {})
    problems = [f"{k} missing" for k in expected if k not in sd]
    problems += [f"{k} is {tuple(sd[k].shape)}, config implies {tuple(v.shape)}"
                 for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems += [f"unexpected {k}" for k in sd if k not in expected]
    if problems:
        raise CheckpointError(f"{path}: weights disagree with the config: " + "; ".join(problems[:4]))
    model.load_state_dict(sd)
    model.eval()
    return model, blob
