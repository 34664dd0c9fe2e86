"""Calibration pairs and the accuracy-drift report, both run through the runtime engines."""
from __future__ import annotations

import numpy as np

from runtime.engines import run_stream
from runtime.residual import apply_deadband, with_base

DRIFT_WINDOW = 500      # steps per point of the drift-vs-step-index curve
LONG_STREAM = 10_000    # at least this many steps in the drift-growth stream (the series is
                        # repeated, state carried across the seam, when it is shorter)
RESET_WINDOW = 144      # steps between state resets for the reset-per-window figures


def stream_states(engine, x: np.ndarray) -> np.ndarray:
    """The state each reading of x [T, I] meets when streamed from zero: [T, L, 1, H]."""
    return run_stream(engine, x, states=True)[1]


def calibration_pairs(engine, x: np.ndarray, n: int = 3000, margin: float = 0.5):
    """Real (x, h) pairs from streaming x, plus a share widened by `margin` for range headroom.

    Test-time readings drift outside the training range (seasons, sensor ageing); a quantized
    graph clips what its calibration never saw, so a third of the samples replay the stream
    scaled by (1 + margin), with the states that stream produces.
    """
    x = x[np.isfinite(x).all(axis=1)]
    idx = np.linspace(0, len(x) - 1, min(n, len(x))).astype(int)
    xs, hs = [x[idx]], [stream_states(engine, x)[idx]]
    if margin > 0:
        wide = (x * (1 + margin)).astype(np.float32)
        xs.append(wide[idx[::3]]), hs.append(stream_states(engine, wide)[idx[::3]])
    return np.concatenate(xs), np.concatenate(hs)


def output_drift(ref: np.ndarray, got: np.ndarray, std: float) -> dict:
    """STM32Cube.AI-style validation metrics of `got` against `ref`."""
    e = got - ref
    cos = float(np.sum(ref * got) / max(np.linalg.norm(ref) * np.linalg.norm(got), 1e-12))
    return {"rmse_over_std": float(np.sqrt(np.mean(e ** 2)) / std), "max_abs_over_std": float(np.max(np.abs(e)) / std),
            "cosine": cos, "l2_relative": float(np.linalg.norm(e) / max(np.linalg.norm(ref), 1e-12))}


def drift_curve(ref: np.ndarray, got: np.ndarray, std: float, window: int = DRIFT_WINDOW) -> list[float]:
    """RMSE/std(y) per consecutive window of steps: does the error grow along the stream?"""
    n = len(ref) // window
    return [float(np.sqrt(np.mean((got[i * window:(i + 1) * window] - ref[i * window:(i + 1) * window]) ** 2)) / std)
            for i in range(n)]


def task_metrics(data, y_norm: np.ndarray, truth: np.ndarray) -> dict:
    """MAE, RMSE and MASE in raw units (mirrors train/evaluate.forecast_metrics for these three)."""
    e = data.target_scaler.denormalize(y_norm).astype(np.float64) - truth
    mae = float(np.mean(np.abs(e)))
    return {"mae": mae, "rmse": float(np.sqrt(np.mean(e ** 2))), "mase": mae / float(np.mean(data.mase_scale))}


def drift_for(q_engine, f_engine, ref_engine, data, md) -> dict:
    """Everything the report says about one quantized artifact vs its float twin and the reference."""
    x, truth = data.split("test", longest=False)
    out = {"steps": len(x)}
    for mode, reset in (("continuous", None), ("reset_per_window", RESET_WINDOW)):
        yq, yf, yr = (run_stream(e, x, reset_every=reset) for e in (q_engine, f_engine, ref_engine))
        std = float(np.std(with_base(yr, x, md)))        # of the forecasts: with an AR base, not level + change
        out[mode] = {"vs_float": output_drift(yf, yq, std), "vs_reference": output_drift(yr, yq, std)}
        if mode == "continuous":            # the forecasts the device gives: through the deadband
            mq, mf = (task_metrics(data, apply_deadband(y, x, md), truth) for y in (yq, yf))
            out["task"] = {"float": mf, "quantized": mq, "mae_change": mq["mae"] / mf["mae"] - 1}
            out["curve"] = {"window": DRIFT_WINDOW, "rmse_over_std": drift_curve(yf, yq, std)}
    # The first segment (all splits) as one long stream, for drift against step index.
    lo, hi = data.segments[0]
    long_x = data.x[lo:hi]
    if len(long_x) < LONG_STREAM:
        long_x = np.resize(long_x, (LONG_STREAM, long_x.shape[1]))
    yq, yf = run_stream(q_engine, long_x), run_stream(f_engine, long_x)
    out["long_stream"] = {"steps": len(long_x), "window": DRIFT_WINDOW,
                          "rmse_over_std": drift_curve(yf, yq, float(np.std(with_base(yf, long_x, md))))}
    return out


def plot_drift(curves: dict, path: str) -> None:
    """Drift per DRIFT_WINDOW steps along the test split streamed once, the split the drift table is on."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for name, d in curves.items():
        c = d["curve"]
        ax.plot(np.arange(len(c["rmse_over_std"])) * c["window"], 100 * np.asarray(c["rmse_over_std"]),
                marker=".", label=f"{name} ({100 * d['continuous']['vs_float']['rmse_over_std']:.2f}% overall)")
    ax.set_xlabel(f"step along the test split, one continuous stream ({c['window']} steps per point)")
    ax.set_ylabel("RMSE / std(y) vs float, %")
    ax.set_yscale("log"), ax.legend(fontsize=8), ax.set_title("quantization drift along the test split")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
