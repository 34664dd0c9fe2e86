"""Calibration pairs and the accuracy-drift report, both run through the runtime engines."""
from __future__ import annotations

import numpy as np

from export.bundle import step_stream
from train.evaluate import forecast_metrics, persistence_scale

DRIFT_WINDOW = 500      # steps per point of the drift-vs-step-index curve
LONG_STREAM = 10_000    # at least this many steps in the drift-growth stream (the series is
                        # repeated, state carried across the seam, when it is shorter)
RESET_WINDOW = 144      # steps between state resets for the reset-per-window figures


def run_stream(engine, x: np.ndarray, md: dict, reset_every: int | None = None) -> np.ndarray:
    """Step one stream x [T, I] through an engine, state fed back; y [T, O] normalized."""
    return step_stream(engine, x, 1, md["num_layers"], md["hidden_size"], reset_every)[:, 0]


def calibration_pairs(engine, x: np.ndarray, md: dict, n: int = 3000, margin: float = 0.5):
    """Real (x, h) pairs from streaming x, plus a share widened by `margin` for range headroom.

    Test-time readings drift outside the training range (seasons, sensor ageing); a quantized
    graph clips what its calibration never saw, so a third of the samples replay the stream
    scaled by (1 + margin), with the states that stream produces.
    """
    def states(xs):
        h = np.zeros((md["num_layers"], 1, md["hidden_size"]), np.float32)
        hs = np.empty((len(xs),) + h.shape, np.float32)
        for t in range(len(xs)):
            hs[t] = h
            h = engine.run(xs[t:t + 1], h)[1].copy()
        return hs
    idx = np.linspace(0, len(x) - 1, min(n, len(x))).astype(int)
    xs, hs = [x[idx]], [states(x)[idx]]
    if margin > 0:
        wide = (x * (1 + margin)).astype(np.float32)
        xs.append(wide[idx[::3]]), hs.append(states(wide)[idx[::3]])
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


def task_metrics(data, y_norm: np.ndarray, a: int) -> dict:
    """MAE/RMSE/MASE of normalized forecasts for origins a..a+len in raw units."""
    truth = data.y_raw[a:a + len(y_norm)]
    pred = data.out_scaler.inverse(y_norm.astype(np.float64))
    return forecast_metrics(truth, pred, persistence_scale(data))


def drift_for(q_engine, f_engine, ref_engine, data, md) -> dict:
    """Everything the report says about one quantized artifact vs its float twin and the reference."""
    a, b = data.splits["test"][0]
    x = data.x[a:b]
    out = {"steps": len(x)}
    for mode, reset in (("continuous", None), ("reset_per_window", RESET_WINDOW)):
        yq, yf, yr = (run_stream(e, x, md, reset) for e in (q_engine, f_engine, ref_engine))
        std = float(np.std(yr))
        out[mode] = {"vs_float": output_drift(yf, yq, std), "vs_reference": output_drift(yr, yq, std)}
        if mode == "continuous":
            mq, mf = task_metrics(data, yq, a), task_metrics(data, yf, a)
            out["task"] = {"float": {k: mf[k] for k in ("mae", "rmse", "mase")},
                           "quantized": {k: mq[k] for k in ("mae", "rmse", "mase")},
                           "mae_change": mq["mae"] / mf["mae"] - 1}
    # The whole series as one long stream (all splits), for drift against step index.
    lo, hi = data.series.segments[0]
    long_x = data.x[lo:hi]
    if len(long_x) < LONG_STREAM:
        long_x = np.resize(long_x, (LONG_STREAM, long_x.shape[1]))
    yq, yf = run_stream(q_engine, long_x, md), run_stream(f_engine, long_x, md)
    out["long_stream"] = {"steps": len(long_x), "window": DRIFT_WINDOW,
                          "rmse_over_std": drift_curve(yf, yq, float(np.std(yf)))}
    return out


def plot_drift(curves: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for name, d in curves.items():
        c = d["long_stream"]
        ax.plot(np.arange(len(c["rmse_over_std"])) * c["window"], 100 * np.asarray(c["rmse_over_std"]),
                marker=".", label=name)
    ax.set_xlabel("step index along one continuous stream"), ax.set_ylabel("RMSE / std(y) vs float, %")
    ax.set_yscale("log"), ax.legend(fontsize=8), ax.set_title("quantization drift along the stream")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
