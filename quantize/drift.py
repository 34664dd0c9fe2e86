"""Calibration pairs and the accuracy-drift report, both run through the runtime engines."""
from __future__ import annotations

import numpy as np

from export.buildfile import reach_back
from runtime.engines import run_stream
from runtime.residual import apply_deadband, with_base

DRIFT_WINDOW = 500      # steps per point of the drift-vs-step-index curve
LONG_STREAM = 10_000    # at least this many steps in the drift-growth stream (the series is
                        # repeated, state carried across the seam, when it is shorter)
RESET_WINDOW = 144      # steps between state resets for the reset-per-window figures
TEST_ROWS = 50_000      # the most test readings the report scores (many series: every k-th series)
WARMUP = 1000           # readings streamed before a scored range, where its segment has them (200 were
                        # enough on a 1,300-row slice, whose 189 test readings from zero state scored 1.9x)


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


def streamed(engine, data, streams: list, md: dict, reset_every=None) -> tuple:
    """Each (series, a, b) of `streams` streamed from up to WARMUP readings before a in its segment
    (from zero state there: by a, the state and an AR base's lags are what the device has), rows
    [a, b) kept, concatenated: (graph outputs, forecasts from each series' base, the device's
    forecasts: through its deadband too), each [sum(b - a), K] normalized, each series in its units."""
    outs = ([], [], [])
    for sid, a, b in streams:
        w, m = reach_back(data.segments, a, a, WARMUP), data.model_of(sid, md)
        x = data.x[w:b]
        y = run_stream(engine, x, reset_every=reset_every)
        for o, v in zip(outs, (y, with_base(y, x, m), apply_deadband(y, x, m))):
            o.append(v[a - w:])
    return tuple(np.concatenate(o) for o in outs)


def task_metrics(data, y_norm: np.ndarray, streams: list) -> dict:
    """MAE, RMSE and MASE (mirrors train/evaluate.forecast_metrics for these three). Each series'
    errors are taken in its own units and expressed in the pooled target's (times pooled scale / its
    scale, as the intervals are), so series 10x apart count alike; many series: each one's own MAE too."""
    errs, per, at = [], {}, 0
    for sid, a, b in streams:
        sc = data.target_scaler_of(sid)
        e = sc.denormalize(y_norm[at:at + b - a]).astype(np.float64) - data.y_raw[a:b]
        at += b - a
        e = e[np.isfinite(e).all(axis=1)]
        per[sid] = float(np.mean(np.abs(e)))
        errs.append(e * (data.target_scaler.scale / sc.scale))
    e = np.concatenate(errs)
    mae = float(np.mean(np.abs(e)))
    out = {"mae": mae, "rmse": float(np.sqrt(np.mean(e ** 2))), "mase": mae / float(np.mean(data.mase_scale))}
    return {**out, "per_series_mae": per} if data.parts else out


def _task(data, fq, ff, streams) -> dict:
    """The task section from the device's forecasts (quantized, float): each series' MAE change too."""
    mq, mf = (task_metrics(data, f, streams) for f in (fq, ff))
    out = {"float": mf, "quantized": mq, "mae_change": mq["mae"] / mf["mae"] - 1}
    if data.parts:
        out["per_series"] = {str(sid): {"float_mae": mf["per_series_mae"][sid], "quantized_mae": mq["per_series_mae"][sid],
                                        "mae_change": mq["per_series_mae"][sid] / mf["per_series_mae"][sid] - 1}
                             for sid in mf["per_series_mae"]}
    return out


def drift_for(q_engine, f_engine, ref_engine, data, md) -> dict:
    """Everything the report says about one quantized artifact vs its float twin and the reference,
    over each series' first test range (at most TEST_ROWS readings: every k-th series)."""
    streams = data.streams("test", rows=TEST_ROWS)
    out = {"steps": sum(b - a for _, a, b in streams), "series": len(streams)}
    for mode, reset in (("continuous", None), ("reset_per_window", RESET_WINDOW)):
        (yq, _, fq), (yf, _, ff), (yr, br, _) = (streamed(e, data, streams, md, reset)
                                                 for e in (q_engine, f_engine, ref_engine))
        std = float(np.std(br))             # of the forecasts from each base, not of level + change
        out[mode] = {"vs_float": output_drift(yf, yq, std), "vs_reference": output_drift(yr, yq, std)}
        if mode == "continuous":            # the forecasts the device gives: through the deadband
            out["task"] = _task(data, fq, ff, streams)
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
