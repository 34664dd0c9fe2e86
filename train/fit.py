"""Stateful training with truncated BPTT, and every stability practice users expect.

The device runs the model as an endless stream: one reading at a time, state carried
forever. So training does the same: each batch row is a long contiguous piece of a
training segment, walked window by window with the hidden state carried (detached)
between windows. Validation is streamed over the whole validation split.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from .prepare import Prepared


class TrainingError(RuntimeError):
    """Training could not continue (e.g. losses kept going non-finite)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    lr: float = 3e-3
    batch: int = 4            # contiguous pieces trained side by side
    chunk: int = 512          # length of one piece (state carried across its windows)
    window: int = 32          # truncated-BPTT length
    clip: float = 1.0         # gradient clipping max_norm
    warmup_steps: int = 30    # linear learning-rate warm-up
    plateau_patience: int = 3  # ReduceLROnPlateau on the validation loss
    patience: int = 15        # early stopping (best weights restored)
    accum: int = 1            # gradient accumulation (windows per optimizer step)
    max_bad_steps: int = 10   # non-finite losses/gradients in a row before aborting
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 0          # 0: min(2, cores)
    max_minutes: float = 0.0  # time budget (0: none); the best weights so far are kept


@dataclass
class FitResult:
    history: list            # one dict per epoch
    best_epoch: int
    best_val: float
    skipped_steps: int
    seconds: float
    stopped: str = "max epochs"   # or "early stopping", "time budget", "interrupted"


def set_determinism(tc: TrainConfig) -> np.random.Generator:
    """Seed everything and pick a thread count that suits a small machine."""
    torch.manual_seed(tc.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(tc.threads or max(1, min(2, os.cpu_count() or 1)))
    return np.random.default_rng(tc.seed)


def pieces(ranges, chunk: int, window: int, rng: np.random.Generator):
    """Cut each range into contiguous pieces of <= chunk steps, at a random phase per epoch."""
    out = []
    for a, b in ranges:
        cuts = list(range(a + int(rng.integers(0, chunk)), b, chunk))
        for lo, hi in zip([a] + cuts, cuts + [b]):
            if hi - lo >= window:
                out.append((lo, hi))
    rng.shuffle(out)
    return out


def _batch(x, y, group):
    """Pad a group of pieces into [B, T, .] tensors with a loss mask [B, T]."""
    t = max(b - a for a, b in group)
    xb = np.zeros((len(group), t, x.shape[1]), np.float32)
    yb = np.zeros((len(group), t, y.shape[1]), np.float32)
    mask = np.zeros((len(group), t), np.float32)
    for i, (a, b) in enumerate(group):
        xb[i, :b - a], yb[i, :b - a], mask[i, :b - a] = x[a:b], y[a:b], 1.0
    return torch.from_numpy(xb), torch.from_numpy(yb), torch.from_numpy(mask)


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def stream_loss(model, data: Prepared, split: str) -> float:
    """MSE (normalized units) streaming the whole split, state carried from its start."""
    model.eval()
    err, n = 0.0, 0
    for a, b in data.splits[split]:
        y, _ = model(torch.from_numpy(data.x[None, a:b]))
        err += float(((y[0] - torch.from_numpy(data.y[a:b])) ** 2).sum())
        n += (b - a) * data.y.shape[1]
    return err / max(n, 1)


@dataclass
class _Counters:
    step: int = 0        # optimizer steps taken (drives the warm-up)
    skipped: int = 0     # non-finite losses or gradients skipped
    bad_run: int = 0     # of those, in a row


def _optimizer_step(model, opt, tc: TrainConfig, c: _Counters, gnorms: list) -> None:
    """Clip, warm the learning rate up, step; a non-finite gradient is skipped and counted."""
    gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip))
    if math.isfinite(gn):
        if c.step < tc.warmup_steps:
            for grp in opt.param_groups:
                grp["lr"] = tc.lr * (c.step + 1) / tc.warmup_steps
        opt.step()
        c.step, c.bad_run = c.step + 1, 0
        gnorms.append(gn)
    else:
        c.skipped, c.bad_run = c.skipped + 1, c.bad_run + 1
    opt.zero_grad(set_to_none=True)


def _train_pieces(model, xb, yb, mask, opt, tc: TrainConfig, c: _Counters, losses: list, gnorms: list) -> None:
    """Walk one batch of pieces [B, T, .] window by window, the state carried (detached) across."""
    state, pending = None, 0
    for w in range(0, xb.shape[1], tc.window):
        m = mask[:, w:w + tc.window]
        if m.sum() == 0:
            break
        out, state = model(xb[:, w:w + tc.window], state)
        state = _detach(state)
        loss = (((out - yb[:, w:w + tc.window]) ** 2).mean(-1) * m).sum() / m.sum()
        if not torch.isfinite(loss):
            c.skipped, c.bad_run, pending = c.skipped + 1, c.bad_run + 1, 0
            opt.zero_grad(set_to_none=True)
        else:
            (loss / tc.accum).backward()
            pending += 1
            losses.append(float(loss.detach()))
        if pending and (pending == tc.accum or w + tc.window >= xb.shape[1]):
            _optimizer_step(model, opt, tc, c, gnorms)
            pending = 0
        if c.bad_run >= tc.max_bad_steps:
            raise TrainingError(f"{c.bad_run} non-finite losses or gradients in a row; lower --lr, raise "
                                "--clip's strictness, or check the data for extreme values")


def _epoch_record(epoch, model, opt, losses, gnorms, val, c: _Counters, seconds) -> dict:
    wnorm = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    return {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else math.nan,
            "val_loss": val, "grad_norm": float(np.mean(gnorms)) if gnorms else math.nan,
            "grad_norm_max": float(np.max(gnorms)) if gnorms else math.nan,
            "weight_norm": wnorm, "lr": opt.param_groups[0]["lr"], "skipped": c.skipped, "seconds": seconds}


class _StopRequest:
    """SIGINT/SIGTERM during fit: finish the current batch, keep the best weights, return.
    A second SIGINT interrupts at once (the default handler is back)."""

    def __init__(self):
        self.why = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._on)
            except ValueError:              # not the main thread: no handler, Ctrl-C behaves as usual
                pass
        return self

    def _on(self, signum, frame):
        self.why = "interrupted"
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
        print(f"\n{signal.Signals(signum).name}: stopping after this batch; the best weights so far are kept", flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _epoch_line(h: dict, epochs: int, elapsed: float, budget_s: float) -> str:
    """One progress line per epoch for logs (stdout not a terminal): losses, seconds, ETA."""
    left = (epochs - h["epoch"]) * elapsed / h["epoch"]
    if budget_s:
        left = min(left, max(budget_s - elapsed, 0.0))
    return (f"epoch {h['epoch']}/{epochs}: train {h['train_loss']:.4f} val {h['val_loss']:.4f} lr {h['lr']:.2g} "
            f"({h['seconds']:.1f} s; ETA at most {left:.0f} s, early stopping may end sooner)")


def fit(model, data: Prepared, tc: TrainConfig, progress: bool = True) -> FitResult:
    """Train in place; returns the per-epoch history. Best validation weights are restored.

    Progress: a tqdm bar on a terminal, one line per epoch otherwise (progress=False: silent).
    SIGINT/SIGTERM and `max_minutes` end training early with the best weights so far.

    Raises:
        TrainingError: `max_bad_steps` non-finite losses or gradients in a row.
    """
    from tqdm import tqdm
    rng = set_determinism(tc)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=tc.plateau_patience)
    history, best_val, best_state, best_epoch, stopped = [], math.inf, None, 0, "max epochs"
    c, t_start, budget_s = _Counters(), time.perf_counter(), 60.0 * tc.max_minutes
    lines = progress and not sys.stdout.isatty()
    bar = tqdm(range(tc.epochs), desc="train", unit="epoch", disable=not progress or lines, leave=False)
    with _StopRequest() as stop:
        for epoch in bar:
            model.train()
            t0, losses, gnorms = time.perf_counter(), [], []
            group_list = pieces(data.splits["train"], tc.chunk, tc.window, rng)
            for g in range(0, len(group_list), tc.batch):
                _train_pieces(model, *_batch(data.x, data.y, group_list[g:g + tc.batch]), opt, tc, c, losses, gnorms)
                if stop.why:
                    break
            val = stream_loss(model, data, "val")
            if c.step >= tc.warmup_steps:
                plateau.step(val)
            history.append(_epoch_record(epoch, model, opt, losses, gnorms, val, c, time.perf_counter() - t0))
            bar.set_postfix(train=f"{history[-1]['train_loss']:.4f}", val=f"{val:.4f}")
            if lines:
                print(_epoch_line(history[-1], tc.epochs, time.perf_counter() - t_start, budget_s), flush=True)
            if val < best_val - 1e-6:
                best_val, best_epoch = val, epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif epoch + 1 - best_epoch >= tc.patience:
                stopped = "early stopping"
                break
            if stop.why or (budget_s and time.perf_counter() - t_start >= budget_s):
                stopped = stop.why or "time budget"
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(history, best_epoch, best_val, c.skipped, time.perf_counter() - t_start, stopped)
