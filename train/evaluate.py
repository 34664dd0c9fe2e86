"""Forecast metrics in raw units, the baselines, and streamed vs windowed evaluation."""
from __future__ import annotations

import numpy as np
import torch

from runtime.residual import level_of, through_deadband

from . import deadband
from .base import model_base
from .data import DataError
from .prepare import Prepared, split_rows

SEASONS = ((86400.0, "1 day"), (604800.0, "1 week"))   # seasonal naive: the same time a day (or week) earlier


def scored_truth(data: Prepared, pos: np.ndarray) -> np.ndarray:
    """[N, K] the targets the forecasts from origins `pos` are scored against, NaN where the grid
    interpolated the target over a short gap (no reading to score: a business-day series' weekends
    were 29% of its scores, linear and easy)."""
    truth = data.y_raw[pos].copy()
    made_up = data.series.interpolated
    if made_up is not None and made_up.any():
        truth[made_up[np.minimum(pos[:, None] + np.arange(1, data.horizon + 1), len(made_up) - 1)]] = np.nan
    return truth


def forecast_metrics(y_true: np.ndarray, y_pred: np.ndarray, scale: np.ndarray) -> dict:
    """MAE, RMSE, sMAPE (%) and MASE, per horizon step and overall. Arrays [N, K] raw units; a NaN
    truth is no score (scored_truth).

    MASE for step k is scaled by the in-sample (training split) k-step persistence MAE; the
    overall MASE is the overall MAE over the mean of those scales. Persistence scores about 1
    (exactly 1 in-sample), and anything below 1 beats it.
    """
    e = y_pred - y_true
    denom = np.abs(y_true) + np.abs(y_pred)
    smape = np.where(denom > 0, 2 * np.abs(e) / np.where(denom > 0, denom, 1), 0.0)
    smape[np.isnan(e)] = np.nan
    with np.errstate(invalid="ignore"):
        per = {"mae": _mean(np.abs(e), 0), "rmse": np.sqrt(_mean(e ** 2, 0)), "smape": 100 * _mean(smape, 0)}
        per["mase"] = per["mae"] / scale
    mae = float(_mean(np.abs(e)))
    out = {"mae": mae, "rmse": float(np.sqrt(_mean(e ** 2))),
           "smape": float(np.mean(per["smape"])), "mase": mae / float(np.mean(scale))}
    out["per_step"] = {k: [float(x) for x in v] for k, v in per.items()}
    out["n"] = int(len(y_true))
    return out


def _mean(v: np.ndarray, axis=None):
    """np.mean without the NaNs (no score); NaN where nothing is left."""
    n = np.sum(~np.isnan(v), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(v, axis=axis) / np.maximum(n, 1), np.nan)


def persistence_scale(data: Prepared) -> np.ndarray:
    """In-sample k-step persistence MAE on the training split, [K]."""
    t, errs = data.series.target, []
    for k in range(data.horizon):
        d = [np.abs(data.y_raw[a:b, k] - t[a:b]) for a, b in data.splits["train"]]
        errs.append(np.mean(np.concatenate(d)))
    return np.maximum(np.asarray(errs), 1e-12)


def eval_positions(data: Prepared, split: str, history: int) -> np.ndarray:
    """Forecast origins of a split with at least `history` steps of its segment behind them."""
    seg_start = {b: a for a, b in data.series.segments}
    pos = []
    for a, b in data.splits[split]:
        start = max(s for s in seg_start.values() if s <= a)
        pos.append(np.arange(max(a, start + history - 1), b))
    return np.concatenate(pos) if pos else np.zeros(0, int)


def season_of(data: Prepared) -> tuple:
    """(steps in the season, its name): one day, or a week where a day is a single step (daily
    data: a one-step season is persistence); (0, "") when the data is too short or untimed."""
    p = data.series.period_s
    shortest = min((b - a for a, b in data.splits["test"]), default=0)
    for seconds, name in SEASONS:
        steps = int(round(seconds / p)) if p else 0
        if steps >= 2:
            return (steps, name) if steps < shortest // 2 else (0, "")
    return 0, ""


def season_steps(data: Prepared) -> int:
    return season_of(data)[0]


RIDGE_LAGS = (1, 2, 4, 8, 16, 24)                    # candidate K, chosen on validation
RIDGE_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # candidate ridge penalties (× rows), idem
RIDGE_MAX_COLUMNS = 1024                             # K × channels, so the fit stays small
RIDGE_MAX_ROWS = 20_000                              # training origins used (evenly spaced)


def _lag_design(x: np.ndarray, pos: np.ndarray, lags: int) -> np.ndarray:
    """[N, lags * I + 1]: every channel at t, t-1, ..., t-lags+1, and a constant."""
    return np.concatenate([x[pos - j] for j in range(lags)] + [np.ones((len(pos), 1), np.float32)], 1)


def ridge_baseline(data: Prepared, positions: np.ndarray):
    """Ridge regression on the last K steps of every input channel, predicting the target's change
    at each horizon step (the DLinear line of baselines). K and λ are chosen on the validation
    split by MAE; closed form (one eigendecomposition per K). The series' identity inputs are left
    out: constant within a series. Returns (name, forecast [N, K] raw)."""
    x, t = data.x[:, :data.x.shape[1] - data.series.identity_inputs], data.series.target
    lag_set = [k for k in RIDGE_LAGS if k * x.shape[1] <= RIDGE_MAX_COLUMNS] or [1]
    tr = eval_positions(data, "train", max(lag_set))
    tr = tr[np.linspace(0, len(tr) - 1, min(len(tr), RIDGE_MAX_ROWS)).astype(int)]
    va = eval_positions(data, "val", max(lag_set))
    best = (np.inf, None)
    for lags in lag_set:
        a, b = _lag_design(x, tr, lags).astype(np.float64), data.y_raw[tr] - t[tr, None]
        ev, vec = np.linalg.eigh(a.T @ a)
        proj = vec.T @ (a.T @ b)
        av = _lag_design(x, va, lags).astype(np.float64)
        for lam in RIDGE_LAMBDAS:
            w = vec @ (proj / (ev + lam * len(tr))[:, None])
            mae = float(np.mean(np.abs(t[va, None] + av @ w - data.y_raw[va])))
            if mae < best[0]:
                best = (mae, (lags, lam, w))
    lags, lam, w = best[1]
    name = f"ridge ({lags} lags x {x.shape[1]} ch)"
    return name, t[positions, None] + _lag_design(x, positions, lags).astype(np.float64) @ w


def baselines(data: Prepared, positions: np.ndarray, ar_lags: int = 24) -> dict:
    """Persistence, seasonal naive (one day back, or a week: season_of), a linear AR(p) on the target and a ridge
    regression on lags of every channel, [N, K] each."""
    t, k = data.series.target, np.arange(1, data.horizon + 1)
    out = {"persistence": np.repeat(t[positions, None], data.horizon, 1)}
    season, name = season_of(data)
    if season:     # step k: the same time in the season's last cycle before the origin (never after it)
        out[f"seasonal naive ({name})"] = t[positions[:, None] + k - season * -(-k // season)]
    lags = lambda pos: np.stack([t[pos - j] for j in range(ar_lags)] + [np.ones(len(pos))], 1)  # noqa: E731
    train_pos = eval_positions(data, "train", ar_lags)
    coef, *_ = np.linalg.lstsq(lags(train_pos), data.y_raw[train_pos], rcond=None)
    out[f"linear AR({ar_lags})"] = lags(positions) @ coef
    name, pred = ridge_baseline(data, positions)
    out[name] = pred
    return out


@torch.no_grad()
def predict_streamed(model, data: Prepared, split: str) -> np.ndarray:
    """Normalized forecasts [N, K] at every origin, streaming each range from a zero state (an AR
    base from the whole segment's readings, as on a device that has been running)."""
    model.eval()
    base = model_base(model, data)
    y = np.full(data.y.shape, np.nan, np.float32)
    for a, b in data.splits[split]:
        bb = None if base is None else torch.from_numpy(base[None, a:b])
        out, _ = model(torch.from_numpy(data.x[None, a:b]), base=bb)
        y[a:b] = out[0].numpy()
    return y


@torch.no_grad()
def predict_windowed(model, data: Prepared, positions: np.ndarray, window: int) -> np.ndarray:
    """Normalized forecasts [N, K]: each from a zero state over the last `window` readings."""
    model.eval()
    base = model_base(model, data)
    idx = positions[:, None] + np.arange(-window + 1, 1)[None, :]          # [N, W]
    out = []
    for i in range(0, len(idx), 1024):
        bb = None if base is None else torch.from_numpy(base[idx[i:i + 1024]])
        y, _ = model(torch.from_numpy(data.x[idx[i:i + 1024]]), base=bb)   # [n, W, K]
        out.append(y[:, -1].numpy())
    return np.concatenate(out)


def forecast_raw(model, data: Prepared, pred: np.ndarray, positions: np.ndarray, series_id=None) -> np.ndarray:
    """Raw-unit forecasts [N, K] from the model's normalized outputs at `positions`, through the
    deadband of series `series_id` (runtime/residual.py: the device's definition)."""
    return data.out_scaler.denormalize(_through_deadband(model, data, pred, positions, series_id), np.float64)


def _through_deadband(model, data: Prepared, pred: np.ndarray, positions: np.ndarray, series_id=None) -> np.ndarray:
    """The model's normalized outputs at `positions` through the deadband of series `series_id`."""
    level = level_of(data.x[positions], model.cfg.residual_input)
    return through_deadband(pred, level, model.cfg.deadband_of(series_id))


def fit_deadband(model, data: Prepared) -> tuple:
    """The deadband (train/deadband.py) fitted on the validation split, streamed; () for level models."""
    j = model.cfg.residual_input
    if j is None:
        return ()
    pos = split_rows(data, "val")
    level = data.x[pos, j:j + 1]
    return deadband.fit(predict_streamed(model, data, "val")[pos] - level, data.y[pos] - level)


def val_step_mae(model, data: Prepared) -> np.ndarray:
    """The model's normalized MAE per horizon step [K] on the validation split, streamed through its
    deadband (each series' own): what the device would have scored there."""
    parts = data.series.parts if len(data.series.parts) > 1 else [None]
    errs = []
    for p in parts:
        sub = data if p is None else data.part(p)
        pos = split_rows(sub, "val")
        pred = _through_deadband(model, sub, predict_streamed(model, sub, "val")[pos], pos, p and p.id)
        errs.append(np.abs(sub.y[pos] - pred))
    return np.mean(np.concatenate(errs), axis=0)


def fit_series_deadband(model, data: Prepared) -> tuple:
    """Many series: each series' own deadband, fitted on its validation split alone (sensors differ in
    resolution: one threshold for all zeroes real changes of one and keeps the wobble of another);
    ((id, tau), ...), () for one series or a level model. A series without validation origins keeps
    the model's."""
    if len(data.series.parts) < 2 or model.cfg.residual_input is None:
        return ()
    parts = [(p.id, data.part(p)) for p in data.series.parts]
    return tuple((sid, fit_deadband(model, sub)) for sid, sub in parts if sub.splits["val"])


def evaluate(model, data: Prepared, split: str = "test", window: int = 64, ar_lags: int = 24) -> dict:
    """Streamed (headline) and windowed GRU metrics beside the baselines, on common origins.

    Many series (data.series.parts): each series is scored alone on its own split, against
    baselines fitted on it alone (`per_series`: id -> models), and the overall figures pool every
    series' origins (a model's name is the first series' name for it: the ridge's lag count varies)."""
    if len(data.series.parts) < 2:
        return _evaluate_one(model, data, split, window, ar_lags)
    per, rows, truth, pos, short = {}, {}, [], [], []
    for p in data.series.parts:
        sub = data.part(p)
        if not sub.splits[split] or unscorable(sub, window, ar_lags, split):
            short.append(p.id)
            continue
        r = _evaluate_one(model, sub, split, window, ar_lags, p.id)
        per[p.id] = r["models"]
        truth.append(scored_truth(sub, r["_positions"]))
        pos.append(r["_positions"] + p.start)
        for i, (name, pred) in enumerate(r["_forecasts"].items()):
            rows.setdefault(i, (name, []))[1].append(pred)
    if not truth:
        with_split = [data.part(p) for p in data.series.parts if data.part(p).splits[split]]
        why = unscorable(with_split[0], window, ar_lags, split) if with_split else f"no series has a {split} split"
        raise DataError(f"of {len(data.series.parts)} series, none can be scored; the first: {why}")
    scale = persistence_scale(data)
    t = np.concatenate(truth)
    models = {name: forecast_metrics(t, np.concatenate(preds), scale) for name, preds in rows.values()}
    streamed = np.concatenate(rows[0][1])
    return {"split": split, "origins": int(len(t)), "scale": [float(v) for v in scale], "models": models,
            "per_series": per, "series_without_origins": short, "_positions": np.concatenate(pos), "_streamed": streamed}


def history_needed(data: Prepared, window: int, ar_lags: int = 24) -> int:
    """Readings of its own segment an origin needs behind it to be scored against every baseline."""
    return max(window, season_steps(data), ar_lags, max(RIDGE_LAGS))


def unscorable(data: Prepared, window: int, ar_lags: int = 24, split: str = "test") -> str | None:
    """Why no origin of the split can be scored (one line with what would help), or None."""
    history = history_needed(data, window, ar_lags)
    if len(eval_positions(data, split, history)):
        return None
    longest = max((b - a for a, b in data.series.segments), default=0)
    others = history_needed(data, 0, ar_lags)
    return (f"no {split} forecast can be scored: each needs {history} readings of its own segment behind it (the "
            f"evaluation window and the baselines' lags), and the longest segment holds {longest}; a series is "
            "split at every gap longer than --max-gap periods: bridge the breaks with a larger --max-gap"
            + (" or a shorter --eval-window" if others < longest else ""))


def _evaluate_one(model, data: Prepared, split: str, window: int, ar_lags: int, series_id=None) -> dict:
    """evaluate() on one series (`series_id`: which of the model's, for its own deadband).

    Raises:
        DataError: no origin of the split has the history a score needs."""
    why = unscorable(data, window, ar_lags, split)
    if why:
        raise DataError(why if series_id is None else f"series {series_id!r}: {why}")
    pos = eval_positions(data, split, history_needed(data, window, ar_lags))
    scale = persistence_scale(data)
    truth = scored_truth(data, pos)
    streamed = forecast_raw(model, data, predict_streamed(model, data, split)[pos], pos, series_id)
    windowed = forecast_raw(model, data, predict_windowed(model, data, pos, window), pos, series_id)
    rows = {"GRU streamed": streamed, f"GRU windowed ({window})": windowed, **baselines(data, pos, ar_lags)}
    if model.cfg.cell != "gru":
        rows = {k.replace("GRU", model.cfg.cell.upper()): v for k, v in rows.items()}
    return {"split": split, "origins": int(len(pos)), "scale": [float(s) for s in scale],
            "models": {name: forecast_metrics(truth, pred, scale) for name, pred in rows.items()},
            "_positions": pos, "_streamed": streamed, "_forecasts": rows}


def step_table(result: dict) -> str:
    """MAE per horizon step for every model (raw units), the best at each step starred."""
    models = result["models"]
    k = len(next(iter(models.values()))["per_step"]["mae"])
    best = np.min([m["per_step"]["mae"] for m in models.values()], axis=0)
    lines = [f"{'MAE per step':<28}" + "".join(f"{'+' + str(i + 1):>10}" for i in range(k)), "-" * (28 + 10 * k)]
    for name, m in sorted(models.items(), key=lambda kv: kv[1]["mase"]):
        cells = [f"{v:.4g}{'*' if v <= b else ' '}" for v, b in zip(m["per_step"]["mae"], best)]
        lines.append(f"{name:<28}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def series_table(result: dict) -> str:
    """Many series: each series' GRU (streamed) MAE per step against its best baseline, losses marked
    '!', ties '=' (a tie is no win)."""
    per = result.get("per_series") or {}
    if not per:
        return ""
    k = len(next(iter(result["models"].values()))["per_step"]["mae"])
    lines = [f"{'GRU / best baseline MAE':<28}" + "".join(f"{'+' + str(i + 1):>16}" for i in range(k)),
             "-" * (28 + 16 * k)]
    for sid, models in per.items():
        mine, best = series_steps(models)
        cells = [f"{m:.3g}/{b:.3g}{'!' if m > b else '=' if m == b else ' '}" for m, b in zip(mine, best)]
        lines.append(f"{str(sid)[:27]:<28}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def series_steps(models: dict) -> tuple:
    """(streamed model's MAE per step, the best baseline's MAE per step) of one series' models."""
    mine = next(v for k, v in models.items() if k.endswith(" streamed"))
    base = [v["per_step"]["mae"] for k, v in models.items() if " streamed" not in k and " windowed" not in k]
    return np.asarray(mine["per_step"]["mae"]), np.min(base, axis=0)


def lost_steps(models: dict) -> list[int]:
    """The horizon steps (1-based) where one series' streamed model loses to its best baseline (MAE)."""
    mine, best = series_steps(models)
    return [int(k) + 1 for k in np.flatnonzero(mine >= best)]


def series_verdict(result: dict) -> list[str]:
    """Every series and step where the streamed model loses to that series' best baseline (MAE)."""
    per = result.get("per_series") or {}
    lines = []
    for sid, models in per.items():
        mine, best = series_steps(models)
        for steps, how in ((np.flatnonzero(mine > best), "loses to"), (np.flatnonzero(mine == best), "ties")):
            if len(steps):      # (a tie is no win: a constant series' 0 against persistence's 0)
                lines.append(f"series {sid}: {how} its best baseline at step(s) {', '.join(str(k + 1) for k in steps)} (MAE)")
    if result.get("series_without_origins"):
        lines.append(f"not scored (too short for a {result['split']} forecast): series "
                     + ", ".join(map(str, result["series_without_origins"])))
    if per:
        won = len(per) - sum(line.startswith("series ") for line in lines)
        lines.append(f"per series: beats the best baseline at every step on {won} of {len(per)} series (MAE)")
    return lines


def metrics_table(result: dict) -> str:
    """A plain-text table of the overall metrics, best MASE first."""
    rows = sorted(result["models"].items(), key=lambda kv: kv[1]["mase"])
    lines = [f"{'model':<28}{'MAE':>10}{'RMSE':>10}{'sMAPE%':>9}{'MASE':>8}",
             "-" * 65]
    for name, m in rows:
        lines.append(f"{name:<28}{m['mae']:>10.4f}{m['rmse']:>10.4f}{m['smape']:>9.3f}{m['mase']:>8.3f}")
    return "\n".join(lines)
