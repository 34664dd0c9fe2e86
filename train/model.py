"""The GRU forecaster: config dataclass, model, and its weight initialization."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

CELLS = ("gru", "lstm")


def _rows(base) -> tuple:
    """An AR base's coefficients (lists, as JSON holds them) as a tuple of tuples of floats."""
    return tuple(tuple(float(v) for v in row) for row in base)


@dataclass(frozen=True)
class RecurrentConfig:
    """Everything needed to rebuild the model; saved in every checkpoint and manifest.

    `cell` says which recurrence: 'gru' (what is exported and deployed) or 'lstm' (for the
    training comparison only).
    """
    input_size: int
    hidden_size: int = 64
    num_layers: int = 1
    horizon: int = 6
    dropout: float = 0.0
    cell: str = "gru"               # "gru" or "lstm" (the LSTM is for comparison only)
    residual_input: int | None = None  # input index added to every forecast (the target's own
                                        # history: the model learns the change, not the level)
    members: int = 1                # independent recurrent nets side by side, forecasts averaged
                                    # (one net of hidden_size with block-diagonal weights)
    deadband: tuple = ()            # per step: a forecast change below it is no change (train/deadband.py),
                                    # normalized units; () none. Fitted after training, residual models only
    base: tuple = ()                # the change is from a linear AR on the level's last p readings:
                                    # [p + 1][horizon] coefficients (runtime/residual.base_of; fitted and
                                    # chosen by train/base.py); () the plain level. Residual models only
    series_deadband: tuple = ()     # many series: ((series id, deadband), ...), each series' own thresholds
                                    # fitted on its validation split (its sensor's resolution); a series
                                    # not listed, or a node the model has never seen, uses `deadband`
    series_base: tuple = ()         # many series: ((series id, base), ...), a series' own AR coefficients where
                                    # they forecast its validation split better than `base` (train/base.py);
                                    # a series not listed, or a node never seen, uses `base`

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell '{self.cell}'; expected one of {', '.join(CELLS)}")
        for name in ("input_size", "hidden_size", "num_layers", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.residual_input is not None and not 0 <= self.residual_input < self.input_size:
            raise ValueError(f"residual_input {self.residual_input} outside 0..{self.input_size - 1}")
        if self.members < 1 or self.hidden_size % self.members:
            raise ValueError(f"members must be >= 1 and divide hidden_size {self.hidden_size}, got {self.members}")
        object.__setattr__(self, "deadband", tuple(float(v) for v in self.deadband))
        object.__setattr__(self, "base", _rows(self.base))
        object.__setattr__(self, "series_base", tuple((str(sid), _rows(b)) for sid, b in self.series_base))
        if self.series_base and not self.base:
            raise ValueError("a series' own base needs the model's base (its streams of unknown series forecast from it)")
        for base in (self.base, *(b for _, b in self.series_base)):
            if base and (self.residual_input is None or len(base) < 2
                         or any(len(r) != self.output_size or not all(map(math.isfinite, r)) for r in base)):
                raise ValueError(f"base needs a residual model and [p + 1 >= 2][{self.output_size}] finite coefficients")
        object.__setattr__(self, "series_deadband",
                           tuple((str(sid), tuple(float(v) for v in tau)) for sid, tau in self.series_deadband))
        for tau in (self.deadband, *(tau for _, tau in self.series_deadband)):
            if tau and (len(tau) != self.output_size or self.residual_input is None
                        or not all(0.0 <= v < float("inf") for v in tau)):
                raise ValueError(f"deadband needs a residual model and {self.output_size} finite values >= 0, "
                                 f"got {list(tau)}")

    def deadband_of(self, series_id=None) -> tuple:
        """The deadband a stream of series `series_id` forecasts through: its own, else the model's."""
        return dict(self.series_deadband).get(series_id, self.deadband)

    def base_of(self, series_id=None) -> tuple:
        """The base a stream of series `series_id` forecasts from: its own, else the model's."""
        return dict(self.series_base).get(series_id, self.base)

    @property
    def output_size(self) -> int:
        return self.horizon          # one target: the forecast is its next `horizon` values

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "RecurrentConfig":
        d = {k: v for k, v in d.items() if not (k == "n_targets" and v == 1)}   # round-1 checkpoints
        known = {f.name for f in fields(RecurrentConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        return RecurrentConfig(**d)


class RecurrentModel(nn.Module):
    """Recurrent layers (batch_first) → dropout on the top layer → linear head, at every step.

    With `members` M > 1 the layers hold M independent nets of hidden_size / M units each: every
    weight that would connect two members is held at zero (a block mask on its gradient), and
    each member has its own head. The forecast is the members' mean, so the whole thing is one
    ordinary recurrent net with block-diagonal weights and the averaged head (`merged_head`):
    an ensemble that costs no more on the device than a single net of hidden_size.
    """

    def __init__(self, cfg: RecurrentConfig):
        super().__init__()
        self.cfg = cfg
        rnn = nn.GRU if cfg.cell == "gru" else nn.LSTM
        self.rnn = rnn(cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True,
                       dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, cfg.members * cfg.output_size)   # member m: rows m*O..(m+1)*O
        init_weights(self.rnn, cfg.members)
        if cfg.residual_input is not None:
            # Start exactly at persistence: the head only learns corrections that pay off.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if cfg.members > 1:
            _hold_blocks(self, cfg.members)

    def forward(self, x: torch.Tensor, state=None, members: bool = False, base: torch.Tensor | None = None):
        """x [B, T, I] → (y [B, T, O], state [L, B, H] (GRU) or (h, c) (LSTM)).

        members=True: every member's forecast, y [B, T, M, O] (training fits each on its own).
        base: the residual's base [B, T, O] where x does not start its stream (training's pieces carry
        it from the whole series: train/base.py); None: computed over x as the device does from a start.
        """
        out, state = self.rnn(x, state)           # out [B, T, H]
        y = self.head(self.drop(out))             # [B, T, M*O]
        y = y.view(*y.shape[:-1], self.cfg.members, self.cfg.output_size)   # [B, T, M, O]
        if not members:
            y = y.mean(-2)                        # [B, T, O]
        if self.cfg.residual_input is not None:
            base = self.base_over(x) if base is None else base    # [B, T, 1] (the level) or [B, T, O]
            y = y + (base[..., None, :] if members else base)
        return y, state

    def base_over(self, x: torch.Tensor, series_id=None) -> torch.Tensor:
        """runtime.residual.base_of in torch, over x [B, T, I] from its start: [B, T, 1] or [B, T, O];
        the base of series `series_id` (its own where it has one, cfg.base_of)."""
        j = self.cfg.residual_input
        level = x[..., j]                                                      # [B, T]
        base = self.cfg.base_of(series_id)
        if not base:
            return level[..., None]
        coef = torch.tensor(base, dtype=torch.float64)                         # [p + 1, O]
        p = coef.shape[0] - 1
        full = torch.cat([level[..., :1].expand(*level.shape[:-1], p - 1), level], -1).double()
        lags = torch.stack([full[..., p - 1 - i:p - 1 - i + level.shape[-1]] for i in range(p)], -1)   # [B, T, p]
        return (lags @ coef[:-1] + coef[-1]).to(x.dtype)

    def merged_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' averaged head as one linear map: (weight [O, H], bias [O])."""
        m, o = self.cfg.members, self.cfg.output_size
        w = self.head.weight.detach().view(m, o, -1).sum(0) / m     # member blocks are zero elsewhere
        return w, self.head.bias.detach().view(m, o).mean(0)


def block_mask(rows: int, cols: int, members: int) -> torch.Tensor:
    """[rows, cols] ones on the members' diagonal blocks (rows, cols split into `members` parts each;
    a gate-stacked weight [G*H, H] repeats the pattern per gate)."""
    r = torch.arange(rows) // (rows // members)
    c = torch.arange(cols) // (cols // members)
    return (r[:, None] == c[None, :]).float()


def _hold_blocks(model: "RecurrentModel", members: int) -> None:
    """Zero every weight between members and keep it zero: the recurrent weights, the inputs of
    layers above the first, and the head."""
    h = model.cfg.hidden_size
    for name, p in model.rnn.named_parameters():
        if name.startswith("weight_hh") or (name.startswith("weight_ih") and not name.endswith("_l0")):
            gates = p.shape[0] // h
            mask = block_mask(h, h, members).repeat(gates, 1)          # [G*H, H]
            _masked(p, mask)
    _masked(model.head.weight, block_mask(model.head.weight.shape[0], h, members))


def _masked(p: torch.Tensor, mask: torch.Tensor) -> None:
    with torch.no_grad():
        p.mul_(mask)
    p.register_hook(lambda g: g * mask)


def init_weights(rnn: nn.Module, members: int = 1) -> None:
    """Xavier for input weights, orthogonal per gate (and member) for recurrent weights, zero biases."""
    h = rnn.hidden_size
    u = h // members
    for name, p in rnn.named_parameters():
        if name.startswith("weight_ih"):
            nn.init.xavier_uniform_(p)
        elif name.startswith("weight_hh"):
            for gate in range(p.shape[0] // h):   # [G*H, H]: one orthogonal block per gate and member
                for m in range(members):
                    lo = gate * h + m * u
                    nn.init.orthogonal_(p.data[lo:lo + u, m * u:(m + 1) * u])
        elif name.startswith("bias"):
            nn.init.zeros_(p)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
