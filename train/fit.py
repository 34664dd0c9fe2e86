"""Stateful training with truncated BPTT, and every stability practice users expect.

The device runs the model as an endless stream: one reading at a time, state carried
forever. So training does the same: each batch row is a long contiguous piece of a
training segment, walked window by window with the hidden state carried (detached)
between windows. Validation is streamed over the whole validation split.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .base import model_base
from .prepare import Prepared, split_rows


# The schedule counts optimizer steps, not passes over the data. An "epoch" of the schedule is at
# least `min_epoch_steps` (100) optimizer steps: on a set whose pass is fewer steps (1,300 hourly
# rows are about 7), the epoch cap and both patiences count passes in proportion, so a small set
# gets the same number of steps, the same learning-rate plateaus and the same early-stopping
# patience as a mid-sized one (the demo's 13,800 training rows are 112 steps a pass: unchanged).
AUTO_EPOCHS = 100


def schedule(tc: "TrainConfig", steps_per_pass: int) -> tuple[int, int, int]:
    """(most passes, plateau patience, early-stopping patience) in passes over the training split,
    for a pass of `steps_per_pass` optimizer steps. An explicit `epochs` is kept as the cap."""
    f = max(1, math.ceil(tc.min_epoch_steps / max(steps_per_pass, 1)))
    return tc.epochs or AUTO_EPOCHS * f, tc.plateau_patience * f, tc.patience * f


class TrainingError(RuntimeError):
    """Training could not continue (e.g. losses kept going non-finite)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 0           # 0: auto (AUTO_EPOCHS, scaled to the data: see `schedule`)
    min_epoch_steps: int = 100  # an epoch of the schedule: at least this many optimizer steps (1: every pass)
    lr: float = 2e-3
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
    threads: int = 1          # torch threads: 1 (a second one gains nothing at this size and collapses on a busy machine)
    max_minutes: float = 0.0  # time budget (0: none); the best weights so far are kept
    balance_horizons: bool = True  # weight each step by 1 / its mean |change| (mse: squared change)
    loss: str = "mae"         # mae or mse, per horizon step (see StepLoss)


@dataclass
class FitResult:
    history: list            # one dict per epoch
    best_epoch: int
    best_val: float
    skipped_steps: int
    seconds: float
    stopped: str = "max epochs"   # or "early stopping", "time budget", "interrupted"
    series_best: dict = field(default_factory=dict)   # many series: id -> [epoch (1-based), its lowest validation loss]


def set_determinism(tc: TrainConfig) -> np.random.Generator:
    """Seed everything and pick a thread count that suits a small machine."""
    torch.manual_seed(tc.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(tc.threads)
    return np.random.default_rng(tc.seed)


LOSSES = ("mae", "mse")


def normalized_target(data: Prepared) -> np.ndarray:
    """The target at every row [N] as the model sees it: by each series' own target scaler (many
    series), else by the one target scaler."""
    t = data.series.target[:, None]
    if not data.series_scalers:
        return data.out_scaler.normalize(t, np.float64)[:, 0]
    out = np.full(len(t), np.nan)
    for p in data.series.parts:
        out[p.start:p.stop] = data.series_scalers[p.id][1].normalize(t[p.start:p.stop], np.float64)[:, 0]
    return out


class StepLoss:
    """The training loss per forecast element: |error| (mae) or error² (mse), times its step's weight.

    MAE is the default: forecasts are judged by it, and it is the one that rewards forecasting
    exactly no change where a sensor mostly reads the same (a quantized temperature, a count),
    while MSE lets the rare large changes of a heavy-tailed signal dominate. Balanced weights
    are 1 / the step's mean |change| (or mean squared change) on the training split, mean 1:
    unweighted, the far steps' larger changes dominate and the near steps get what is left.

    Many series: each series' rows are weighted by its own steps' spread (`rows`, [N, K]), so every
    series counts by its error relative to no change, as it is judged. With one pooled spread, a
    quiet series' errors (a room whose temperature barely moves, in its own z-scores) weigh a few
    times less than a lively one's, and the model leaves it losing to persistence. A series' spread
    is floored at 1/MAX_SERIES_WEIGHT of the pooled one, so a near-constant series cannot take over.
    """

    MAX_SERIES_WEIGHT = 10.0

    def __init__(self, data: Prepared, kind: str = "mae", balance: bool = True):
        if kind not in LOSSES:
            raise ValueError(f"unknown loss '{kind}'; expected one of {', '.join(LOSSES)}")
        self.power = 1 if kind == "mae" else 2
        rows = np.ones(data.y.shape, np.float64)                                # [N, K]
        if balance:
            level = normalized_target(data)                                     # [N]
            train = split_rows(data, "train")
            pooled = self._spread(data.y, level, train)
            rows /= np.maximum(pooled, 1e-12)
            for p in data.series.parts:
                own = train[(train >= p.start) & (train < p.stop)]
                if len(own):
                    spread = self._spread(data.y, level, own)
                    spread = np.where(np.isfinite(spread), spread, pooled)       # no finite spread: the pooled one
                    rows[p.start:p.stop] = 1.0 / np.maximum(spread, pooled / self.MAX_SERIES_WEIGHT)
            rows /= rows[train].mean() if len(train) else rows.mean()
        self.rows = rows.astype(np.float32)
        self.weights = torch.from_numpy(self.rows.mean(0))     # one series: every row's

    def _spread(self, y, level, rows) -> np.ndarray:
        """The mean |change| (or squared change) from the level at each step over `rows`, [K]."""
        return np.nanmean(np.abs(y[rows] - level[rows, None]) ** self.power, axis=0)

    def __call__(self, pred: torch.Tensor, truth: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted error per element, [..., K]; `weights` (the rows' `rows`, broadcastable), else
        the one series' step weights."""
        return (pred - truth).abs().pow(self.power) * (self.weights if weights is None else weights)


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


def _batch(x, y, weights, group, base=None):
    """Pad a group of pieces into [B, T, .] tensors: inputs, targets, their loss weights (StepLoss.rows),
    a loss mask [B, T], and the base's [B, T, K] (None when the model takes its base from x)."""
    t = max(b - a for a, b in group)
    xb = np.zeros((len(group), t, x.shape[1]), np.float32)
    yb = np.zeros((len(group), t, y.shape[1]), np.float32)
    wb = np.zeros((len(group), t, y.shape[1]), np.float32)
    bb = None if base is None else np.zeros((len(group), t, base.shape[1]), np.float32)
    mask = np.zeros((len(group), t), np.float32)
    for i, (a, b) in enumerate(group):
        xb[i, :b - a], yb[i, :b - a], wb[i, :b - a], mask[i, :b - a] = x[a:b], y[a:b], weights[a:b], 1.0
        if bb is not None:
            bb[i, :b - a] = base[a:b]
    return torch.from_numpy(xb), torch.from_numpy(yb), torch.from_numpy(wb), torch.from_numpy(mask), _tensor(bb)


def _tensor(a):
    return None if a is None else torch.from_numpy(a)


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def stream_loss(model, data: Prepared, split: str, loss: StepLoss, base=None,
                by_series: dict | None = None) -> tuple[float, np.ndarray]:
    """The weighted loss (normalized units) streaming the whole split, state carried from its start:
    (of the forecast, i.e. the members' mean; of each member [M]). base: train/base.model_base's.
    `by_series` (a dict, many series): filled with each series' own loss of the forecast."""
    model.eval()
    err, each, n, sums = 0.0, 0.0, 0, {}
    parts = data.series.parts
    starts = np.asarray([p.start for p in parts]) if by_series is not None else None    # parts in row order
    for a, b in data.splits[split]:
        bb = None if base is None else _tensor(base[None, a:b])
        y, _ = model(torch.from_numpy(data.x[None, a:b]), members=True, base=bb)     # [1, T, M, O]
        truth, w = torch.from_numpy(data.y[a:b]), torch.from_numpy(loss.rows[a:b])
        e = float(loss(y[0].mean(1), truth, w).sum())
        err += e
        each = each + loss(y[0], truth[:, None], w[:, None]).sum((0, 2)).numpy()
        n += (b - a) * data.y.shape[1]
        if by_series is not None:
            sid = parts[int(np.searchsorted(starts, a, side="right")) - 1].id if parts else None
            s, m = sums.get(sid, (0.0, 0))
            sums[sid] = (s + e, m + (b - a) * data.y.shape[1])
    if by_series is not None:
        by_series.update({sid: s / m for sid, (s, m) in sums.items()})
    return err / max(n, 1), np.atleast_1d(each) / max(n, 1)


HISTORY_SERIES = 64     # at most this many series' validation losses in every epoch's history (metrics.json
                        # stays bounded: 5,000 series x 100 epochs would be about 14 MB); each one's best is kept


def track_series_best(best: dict, per: dict | None, epoch: int) -> dict:
    """`best` (id -> [epoch, loss]) updated with one epoch's per-series validation losses (1-based epoch)."""
    for sid, v in (per or {}).items():
        if sid not in best or v < best[sid][1]:
            best[sid] = [epoch, float(v)]
    return best


def series_best_epochs(fit_result) -> dict:
    """Many series: the epoch (1-based) at which each series' own validation loss was lowest."""
    return {sid: e for sid, (e, _) in fit_result.series_best.items()}


class _MemberBest:
    """Each member's best weights on validation and the epoch it last improved.

    Members are independent nets, and each owns whole rows of every parameter (the recurrent
    weights and biases are gate-stacked [G*H, .], the head [M*O, H]), so a member's best weights
    are copied row by row; the model ends with every member at its own best epoch.
    """

    def __init__(self, model):
        cfg = model.cfg
        unit, out = cfg.hidden_size // cfg.members, cfg.output_size
        self.owner = {k: (torch.arange(v.shape[0]) // out if k.startswith("head.")
                          else torch.arange(v.shape[0]) % cfg.hidden_size // unit)
                      for k, v in model.state_dict().items()}
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.loss = np.full(cfg.members, np.inf)
        self.epoch = np.zeros(cfg.members, int)

    def update(self, model, losses: np.ndarray, epoch: int) -> None:
        better = np.flatnonzero(losses < self.loss - 1e-6)
        if len(better):
            rows = {k: torch.isin(o, torch.from_numpy(better)) for k, o in self.owner.items()}
            for k, v in model.state_dict().items():
                self.state[k][rows[k]] = v.detach()[rows[k]]
            self.loss[better], self.epoch[better] = losses[better], epoch


@dataclass
class _Counters:
    step: int = 0        # optimizer steps taken (drives the warm-up)
    skipped: int = 0     # non-finite losses or gradients skipped
    bad_run: int = 0     # of those, in a row


class Alone:
    """How one process's part of each batch joins the rest: training alone, it is all of the batch.

    Data-parallel workers (train/cluster.Replicas) each take some rows of every batch, divide their
    loss by the whole batch's loss count, and sum their gradients, losses and stop requests, so every
    replica takes the same step: the full batch's.
    """

    def rows(self, n: int) -> torch.Tensor:
        """This process's rows of a batch of n pieces."""
        return torch.arange(n)

    def total(self, loss: torch.Tensor) -> torch.Tensor:
        """The whole batch's loss from this process's share of it."""
        return loss.detach()

    def reduce(self, model) -> None:
        """Sum the gradients over the processes."""

    def any(self, flag: bool) -> bool:
        """Whether any process raised the flag."""
        return flag


def _optimizer_step(model, opt, tc: TrainConfig, c: _Counters, gnorms: list, share: Alone) -> None:
    """Clip, warm the learning rate up, step; a non-finite gradient is skipped and counted."""
    share.reduce(model)
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


def _train_pieces(model, xb, yb, wb, mask, bb, loss_fn: StepLoss, opt, tc: TrainConfig, c: _Counters, losses: list,
                  gnorms: list, share: Alone) -> None:
    """Walk one batch of pieces [B, T, .] window by window, the state carried (detached) across.

    The batch holds the same number of pieces for each member, member by member: each member is
    fitted on its own pieces only (its own shuffle), as if it were trained alone. This process
    walks its share's rows of the batch (all of them when training alone).
    """
    state, pending = None, 0
    owner = torch.arange(xb.shape[0]) // (xb.shape[0] // model.cfg.members)  # [B] member of each piece
    mine = share.rows(xb.shape[0])                                            # [b] this process's rows
    rows = torch.arange(len(mine))
    for w in range(0, xb.shape[1], tc.window):
        m = mask[:, w:w + tc.window]                                         # [B, W]
        if m.sum() == 0:
            break
        loss = torch.zeros(())
        if len(mine):
            base = None if bb is None else bb[mine, w:w + tc.window]
            out, state = model(xb[mine, w:w + tc.window], state, members=True, base=base)   # [b, W, M, O]
            state = _detach(state)
            own = out[rows, :, owner[mine]]                                  # [b, W, O]
            err = loss_fn(own, yb[mine, w:w + tc.window], wb[mine, w:w + tc.window])      # [b, W, O]
            loss = (err.mean(-1) * m[mine]).sum() / m.sum()
        total = share.total(loss)
        if not torch.isfinite(total):
            c.skipped, c.bad_run, pending = c.skipped + 1, c.bad_run + 1, 0
            opt.zero_grad(set_to_none=True)
        else:
            if loss.requires_grad:
                (loss / tc.accum).backward()
            pending += 1
            losses.append(float(total))
        if pending and (pending == tc.accum or w + tc.window >= xb.shape[1]):
            _optimizer_step(model, opt, tc, c, gnorms, share)
            pending = 0
        if c.bad_run >= tc.max_bad_steps:
            raise TrainingError(f"{c.bad_run} non-finite losses or gradients in a row; lower --lr, raise "
                                "--clip's strictness, or check the data for extreme values")


def _epoch_record(epoch, model, opt, losses, gnorms, val, c: _Counters, seconds, per=None) -> dict:
    wnorm = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    return {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else math.nan,
            "val_loss": val, "grad_norm": float(np.mean(gnorms)) if gnorms else math.nan,
            "grad_norm_max": float(np.max(gnorms)) if gnorms else math.nan,
            "weight_norm": wnorm, "lr": opt.param_groups[0]["lr"], "skipped": c.skipped, "seconds": seconds,
            **({"val_loss_per_series": per} if per and len(per) <= HISTORY_SERIES else {})}


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


def _train_epoch(model, data: Prepared, loss: StepLoss, opt, tc: TrainConfig, c: _Counters, rng, stop,
                 share: Alone, base) -> tuple:
    """One pass over the training split, each member on its own shuffle of the pieces; returns the
    window losses and gradient norms."""
    model.train()
    losses, gnorms = [], []
    orders = [pieces(data.splits["train"], tc.chunk, tc.window, rng) for _ in range(model.cfg.members)]
    n = min(map(len, orders))
    for g in range(0, n, tc.batch):
        group = [p for order in orders for p in order[g:min(g + tc.batch, n)]]   # member by member
        _train_pieces(model, *_batch(data.x, data.y, loss.rows, group, base), loss, opt, tc, c, losses, gnorms, share)
        if share.any(bool(stop.why)):
            break
    return losses, gnorms


def _validate(model, data: Prepared, loss: StepLoss, base, best: _MemberBest, plateau, c: _Counters,
              tc: TrainConfig, epoch: int):
    """The epoch's validation loss (and each series' own with many series, else None): each member's
    best weights kept, the learning-rate plateau stepped after the warm-up."""
    per = {} if len(data.series.parts) > 1 else None
    val, each = stream_loss(model, data, "val", loss, base, by_series=per)
    best.update(model, each, epoch + 1)
    if c.step >= tc.warmup_steps:
        plateau.step(val)
    return val, per


def fit(model, data: Prepared, tc: TrainConfig, progress: bool = True, share: Alone | None = None) -> FitResult:
    """Train in place; returns the per-epoch history. Best validation weights are restored.

    Progress: a tqdm bar on a terminal, one line per epoch otherwise (progress=False: silent).
    SIGINT/SIGTERM and `max_minutes` end training early with the best weights so far.
    `share`: this process's part of each batch in data-parallel training (None: all of it).

    Raises:
        TrainingError: `max_bad_steps` non-finite losses or gradients in a row.
    """
    from tqdm import tqdm
    share = share or Alone()
    rng = set_determinism(tc)
    base = model_base(model, data)
    loss = StepLoss(data, tc.loss, tc.balance_horizons)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=tc.plateau_patience)
    best = _MemberBest(model)
    history, stopped, series_best = [], "max epochs", {}
    c, t_start, budget_s = _Counters(), time.perf_counter(), 60.0 * tc.max_minutes
    lines = progress and not sys.stdout.isatty()
    epochs, patience = tc.epochs or AUTO_EPOCHS, tc.patience
    bar = tqdm(total=epochs, desc="train", unit="epoch", disable=not progress or lines, leave=False)
    with _StopRequest() as stop:
        epoch = -1
        while (epoch := epoch + 1) < epochs:
            t0 = time.perf_counter()
            losses, gnorms = _train_epoch(model, data, loss, opt, tc, c, rng, stop, share, base)
            if epoch == 0:                         # a pass's steps are known: scale the schedule to them
                epochs, plateau.patience, patience = schedule(tc, c.step + c.skipped)
                bar.total = epochs
            val, per = _validate(model, data, loss, base, best, plateau, c, tc, epoch)
            track_series_best(series_best, per, epoch + 1)
            history.append(_epoch_record(epoch, model, opt, losses, gnorms, val, c, time.perf_counter() - t0, per))
            bar.update(), bar.set_postfix(train=f"{history[-1]['train_loss']:.4f}", val=f"{val:.4f}")
            if lines:
                print(_epoch_line(history[-1], epochs, time.perf_counter() - t_start, budget_s), flush=True)
            if epoch + 1 - best.epoch.max() >= patience:          # no member improved for `patience` epochs
                stopped = "early stopping"
                break
            if share.any(bool(stop.why or (budget_s and time.perf_counter() - t_start >= budget_s))):
                stopped = stop.why or "time budget"
                break
    if np.isfinite(best.loss).any():
        model.load_state_dict(best.state)
    best_val = stream_loss(model, data, "val", loss, base)[0]
    return FitResult(history, int(best.epoch.max()), best_val, c.skipped, time.perf_counter() - t_start, stopped,
                     series_best)
