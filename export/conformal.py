"""Split-conformal forecast intervals from the validation split's streamed errors (the manifest's
`intervals` section), and their offline coverage on the test split.

The float model streams each split's segment from its start, state carried, the way the device
runs; the signed errors truth - forecast at every validation origin give, per horizon step, the
quantiles the device turns into intervals (runtime/intervals.py). Quantiles carry the split-
conformal finite-sample correction: the upper tail at p uses rank ceil((n + 1) p), the lower tail
mirrors it, so coverage holds for exchangeable errors.
"""
from __future__ import annotations

import numpy as np
import torch

LEVELS = (0.8, 0.95)
PROBS = np.linspace(0.0, 1.0, 201)        # the quantile grid stored for the device (ACI moves along it)


@torch.no_grad()
def streamed_errors(model, series: dict, split: str, in_sc, out_sc) -> np.ndarray:
    """Signed errors truth - forecast [N, K] (raw units) at every origin of a split, streamed, from
    the base and through the deadband the device forecasts with (runtime/residual.py; a series' own
    where it has one). A model of many series normalizes each series' rows with its own scalers
    (series["parts"], series["scalers"]), and its errors are given in the pooled target's scale: each
    series' divided by its own target scale, times the pooled one (runtime/intervals.py scales them
    back per stream)."""
    default = (in_sc, out_sc)
    from runtime.residual import level_of, through_deadband
    x_all = series["inputs"].numpy()
    y_all = series["targets"].numpy()
    j, errs = model.cfg.residual_input, []
    for a, b in series["splits"][split]:
        start = max(s for s, e in series["segments"] if s <= a)
        in_sc, out_sc = scalers_at(series, a, default)
        sid = series_at(series, a)
        x = torch.from_numpy(in_sc.normalize(x_all[start:b])[None])
        base = None if j is None else model.base_over(x, sid)                   # the series' own base where it has one
        y = model(x, base=base)[0][0].numpy()[a - start:]                       # [T, K] normalized
        y = through_deadband(y, level_of(x[0, a - start:].numpy(), j), model.cfg.deadband_of(sid))
        pred = out_sc.denormalize(y)
        errs.append((y_all[a:b] - pred) * (default[1].scale / out_sc.scale))
    e = np.concatenate(errs)
    return e[np.isfinite(e).all(axis=1)]


def conformal_quantiles(errors: np.ndarray, probs=PROBS) -> np.ndarray:
    """[K, P] quantiles of signed errors with the split-conformal rank correction."""
    n = len(errors)
    out = np.empty((errors.shape[1], len(probs)))
    for i, p in enumerate(probs):
        if p >= 0.5:
            q = min(1.0, np.ceil((n + 1) * p) / n)
            out[:, i] = np.quantile(errors, q, axis=0, method="higher")
        else:
            q = max(0.0, 1.0 - np.ceil((n + 1) * (1 - p)) / n)
            out[:, i] = np.quantile(errors, q, axis=0, method="lower")
    return out


def coverage(errors: np.ndarray, quantiles: np.ndarray, level: float) -> list[float]:
    """Share of errors inside [Q(a/2), Q(1 - a/2)] per horizon step."""
    a = 1.0 - level
    lo = np.array([np.interp(a / 2, PROBS, q) for q in quantiles])
    hi = np.array([np.interp(1 - a / 2, PROBS, q) for q in quantiles])
    return [float(v) for v in ((errors >= lo) & (errors <= hi)).mean(axis=0)]


def series_at(series: dict, row: int):
    """The id of the series that holds grid row `row`, else None (one series)."""
    return next((sid for sid, start, stop, *_ in series.get("parts") or () if start <= row < stop), None)


def scalers_at(series: dict, row: int, default: tuple) -> tuple:
    """(input Scaler, target Scaler) of the series that holds grid row `row`, else `default`."""
    from runtime.scaler import Scaler
    sc = (series.get("scalers") or {}).get(series_at(series, row))
    return (Scaler.from_dict(sc["inputs"]), Scaler.from_dict(sc["targets"])) if sc else default


def intervals_section(model, ck: dict, levels=LEVELS) -> dict:
    """The manifest's `intervals`: levels, the quantile grid, widths, and offline coverage."""
    from runtime.scaler import Scaler
    in_sc = Scaler.from_dict(ck["in_scaler"])
    out_sc = Scaler.from_dict(ck["out_scaler"])
    val = streamed_errors(model, ck["series"], "val", in_sc, out_sc)
    test = streamed_errors(model, ck["series"], "test", in_sc, out_sc)
    q = conformal_quantiles(val)
    return {"method": "split conformal on the validation split's streamed errors (signed, per horizon step); "
                      "adaptive conformal inference on the device",
            "levels": list(levels), "calibration_points": int(len(val)), "probs": [float(p) for p in PROBS],
            "error_quantiles": [[float(v) for v in row] for row in q],
            "width": {str(lv): [float(np.interp(1 - (1 - lv) / 2, PROBS, r) - np.interp((1 - lv) / 2, PROBS, r))
                                for r in q] for lv in levels},
            "test_coverage_offline": {str(lv): coverage(test, q, lv) for lv in levels},
            "test_points": int(len(test))}
