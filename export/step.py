"""The GRU *step* graph: one reading in, one forecast and the next state out.

(x float32 [B, I], h float32 [L, B, H]) → (y float32 [B, O], h_next float32 [L, B, H]).
Written out as matmuls + sigmoid + tanh + mul/add so that every converter sees plain ops: no
fused ONNX `GRU` (onnxruntime's quantizer leaves it in float) and no TFLite sequence op (it
becomes a WHILE loop that TFLite Micro cannot run).

Residual models (RecurrentConfig.residual_input = j) forecast the change from a base: the target's
current reading, or an AR on its last readings (runtime/residual.py). The graph outputs only that
change; every runtime engine adds x[:, j] in float after the call, and the Forecaster swaps in an
AR base, which needs each stream's last readings. Inside an int8 graph the absolute level would set the output's quantization step
(measured on the demo: 0.038 normalized units, i.e. 0.06 degC, as large as the model's MAE).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from runtime.bundle import HEAD_NAMES, npz_layer_names
from train.model import RecurrentModel


class GRUStep(nn.Module):
    """The streaming step of a trained RecurrentModel (dropout is inactive at inference)."""

    def __init__(self, model: RecurrentModel):
        super().__init__()
        cfg = model.cfg
        if cfg.cell != "gru":
            raise ValueError(f"cannot export a '{cfg.cell}' checkpoint: only GRU cells are exported "
                             "(the LSTM option exists for comparison during training)")
        self.cfg = cfg
        rnn = model.rnn
        for layer in range(cfg.num_layers):                              # nn.GRU's own names
            for name in npz_layer_names(layer).values():
                self.register_buffer(name, getattr(rnn, name).detach().clone())
        head_w, head_b = model.merged_head()                                # the members' mean
        self.register_buffer("head_w", head_w.clone())                      # [O, H]
        self.register_buffer("head_b", head_b.clone())                      # [O]

    def cell(self, layer: int, inp, h):
        """One GRU cell; returns (h_new, r, z), all [B, H]."""
        w_ih, w_hh, b_ih, b_hh = (getattr(self, name) for name in npz_layer_names(layer).values())
        gi = inp @ w_ih.T + b_ih                                           # [B, 3H]
        gh = h @ w_hh.T + b_hh                                             # [B, 3H]
        # PyTorch gate order r, z, n; the reset gate multiplies (W_hn h + b_hn) (linear_before_reset).
        i_r, i_z, i_n = gi.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n), r, z

    def forward(self, x, h):
        inp, states = x, []
        for layer in range(self.cfg.num_layers):
            inp, _, _ = self.cell(layer, inp, h[layer])
            states.append(inp)
        y = inp @ self.head_w.T + self.head_b                             # [B, O], the change only
        return y, torch.stack(states)                                     # [L, B, H]


def numpy_weights(step: GRUStep) -> dict:
    """float32 arrays for the runtime's numpy engine, named by the one map (runtime.bundle.WEIGHT_NAMES,
    HEAD_NAMES)."""
    out = {}
    for layer in range(step.cfg.num_layers):
        for npz, torch_name in npz_layer_names(layer).items():
            out[npz] = getattr(step, torch_name).numpy().astype(np.float32)
    (head_w, _), (head_b, _) = HEAD_NAMES
    out[head_w] = step.head_w.numpy().astype(np.float32)                 # merged head [O, H]
    out[head_b] = step.head_b.numpy().astype(np.float32)                 # [O]
    return out


@torch.no_grad()
def sequence_reference(model: RecurrentModel, xs: np.ndarray) -> np.ndarray:
    """The trained model over whole sequences at once from a zero state: xs [T, B, I] → y [T, B, O],
    the graph's change plus the level, as the engines' `run` gives it (an AR base is the
    Forecaster's, after the engine: runtime/residual.py)."""
    x = torch.from_numpy(np.ascontiguousarray(xs.transpose(1, 0, 2), np.float32))
    j = model.cfg.residual_input
    y, _ = model(x, base=None if j is None else x[..., j:j + 1])
    return y.numpy().transpose(1, 0, 2)
