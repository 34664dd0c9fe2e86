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
    ax[0].set_yscale("log"), ax[0].set_title("MSE, normalized"), ax[0].legend()
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
