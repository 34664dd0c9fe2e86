"""Training curves and forecast-vs-actual plots (PNG)."""
from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history: list, path: str) -> None:
    """Loss (train and streamed validation), gradient norm and weight norm per epoch."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train (TBPTT)")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="validation (streamed)")
    ax[0].set_yscale("log"), ax[0].set_title("loss per element (weighted, normalized)"), ax[0].legend()
    ax[1].plot(ep, [h["grad_norm"] for h in history], label="mean")
    ax[1].plot(ep, [h["grad_norm_max"] for h in history], label="max")
    ax[1].set_title("gradient norm (before clipping)"), ax[1].legend()
    ax[2].plot(ep, [h["weight_norm"] for h in history])
    ax[2].set_title("weight norm")
    for a in ax:
        a.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_forecast(truth: np.ndarray, pred: np.ndarray, name: str, unit: str, path: str, steps: int = 600) -> None:
    """The first and last horizon steps of the streamed forecast against the actual values."""
    plt = _plt()
    n = min(steps, len(truth))
    fig, ax = plt.subplots(figsize=(12, 3.6))
    ax.plot(truth[:n, 0], color="black", lw=1.2, label="actual (t+1)")
    ax.plot(pred[:n, 0], lw=1, label="forecast t+1")
    k = truth.shape[1]
    if k > 1:
        ax.plot(pred[:n, -1], lw=1, alpha=0.8, label=f"forecast t+{k} (shown at its origin)")
        ax.plot(truth[:n, -1], color="gray", lw=0.8, ls="--", label=f"actual t+{k}")
    ax.set_title(f"{name}: streamed forecast on the test split (first {n} origins)")
    ax.set_xlabel("step"), ax.set_ylabel(f"{name} [{unit}]" if unit else name), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_steps(models: dict, name: str, unit: str, period_s, path: str) -> None:
    """Test MAE per horizon step, every model: where the GRU wins and where it does not."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for label, m in sorted(models.items(), key=lambda kv: kv[1]["mase"]):
        mae = m["per_step"]["mae"]
        steps = np.arange(1, len(mae) + 1)
        bold = label.startswith(("GRU", "LSTM"))
        ax.plot(steps, mae, marker="o" if bold else ".", lw=2 if bold else 1, label=label)
    ax.set_xlabel(f"horizon step ({period_s:g} s each)" if period_s else "horizon step")
    ax.set_ylabel(f"MAE [{unit}]" if unit else "MAE"), ax.set_title(f"{name}: test MAE per horizon step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
