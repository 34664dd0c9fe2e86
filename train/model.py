"""The GRU forecaster: config dataclass, model, and its weight initialization."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

CELLS = ("gru", "lstm")


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
    """Recurrent layers (batch_first) → dropout on the top layer → linear head, at every step."""

    def __init__(self, cfg: RecurrentConfig):
        super().__init__()
        self.cfg = cfg
        rnn = nn.GRU if cfg.cell == "gru" else nn.LSTM
        self.rnn = rnn(cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True,
                       dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, cfg.output_size)
        init_weights(self.rnn)
        if cfg.residual_input is not None:
            # Start exactly at persistence: the head only learns corrections that pay off.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, state=None):
        """x [B, T, I] → (y [B, T, O], state [L, B, H] (GRU) or (h, c) (LSTM))."""
        out, state = self.rnn(x, state)           # out [B, T, H]
        y = self.head(self.drop(out))             # [B, T, O]
        if self.cfg.residual_input is not None:
            y = y + x[..., self.cfg.residual_input:self.cfg.residual_input + 1]  # [B, T, 1] broadcast
        return y, state


def init_weights(rnn: nn.Module) -> None:
    """Xavier for input weights, orthogonal per gate for recurrent weights, zero biases."""
    h = rnn.hidden_size
    for name, p in rnn.named_parameters():
        if name.startswith("weight_ih"):
            nn.init.xavier_uniform_(p)
        elif name.startswith("weight_hh"):
            for gate in range(p.shape[0] // h):   # [G*H, H]: one orthogonal block per gate
                nn.init.orthogonal_(p.data[gate * h:(gate + 1) * h])
        elif name.startswith("bias"):
            nn.init.zeros_(p)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
