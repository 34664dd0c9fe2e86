"""One training run end to end: data → model → fit → evaluate → checkpoint + metrics + plots."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .checkpoint import plain, save_checkpoint, write_atomically
from .base import base_for, base_name, base_step_mae, choose_base, series_bases_for
from .data import load_series
from .deadband import HOLD
from .evaluate import (evaluate, fit_deadband, fit_series_deadband, metrics_table, series_table, series_verdict,
                       step_table, val_step_mae)
from .fit import TrainConfig, fit, series_best_epochs
from .model import RecurrentConfig, RecurrentModel, count_parameters
from .prepare import prepare



@dataclass(frozen=True)
class DataSpec:
    """How to rebuild the exact same data and splits (saved so later stages can reload them)."""
    data: str
    target: str | None = None
    features: tuple = ()
    exclude: tuple = ()
    time_col: str | None = None
    max_gap: int = 3
    horizon: int = 6
    units: tuple = ()          # (column, unit) pairs given with --units (name[unit] headers are read too)
    calendar: str = "auto"     # calendar inputs from the timestamps (train/calendar.py): auto, none, day, week, day,week
    utc_offset_hours: float = 0.0  # the timestamps' clock ahead of UTC (naive local times), for epoch times on the device
    timezone: str | None = None    # or the timestamps' IANA zone (runtime/times.py): naive times read in it, DST included
    delimiter: str | None = None   # how to read a CSV (train/table.py): the field separator (None: found),
    decimal: str | None = None     # the decimal mark (None: found in the file),
    skip_rows: int = 0             # and the lines above the header to skip
    series_col: str | None = None  # the column naming each row's series (long format): one model, many series
    only_series: str | None = None  # one series of those alone (the per-series models of --compare-local)
    series_input: str = "off"      # the series' identity as inputs (train/calendar.add_identity): off, on
    resample_s: float | None = None  # readings at any times on a grid of this period (train/resample.py)


@dataclass(frozen=True)
class ModelSpec:
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.3
    cell: str = "gru"
    residual: bool = True
    eval_window: int = 64
    members: int = 0           # 0: auto, hidden_size // UNITS_PER_MEMBER nets (see members_for)
    deadband: bool = True      # fit the per-step deadband on validation (train/deadband.py)
    base: str = "auto"         # the residual's base (train/base.py): auto (on small data, AR(p) or the level on
                               # validation; else the level), ar (that choice on any data) or level
    series_base: str = "pooled"  # many series on an AR base: pooled (one for all) or own (train/base.choose_series_bases)


UNITS_PER_MEMBER = 16


def members_for(hidden_size: int, members: int = 0) -> int:
    """How many independent nets the hidden units are split into: `members`, or with 0 one per
    UNITS_PER_MEMBER units (the largest such count that divides hidden_size; at least 1).

    Measured (README, "Forecast quality"): four nets of 16 beat one net of 64 on the demo and
    hold their margin over every baseline at every step on all three bundled data sets, and
    their int8 graphs drift less (each net's rounding errors partly cancel in the mean); one
    net of 64 is more accurate on the large hourly traffic set. Same device cost either way.
    """
    if members:
        return members
    m = max(1, hidden_size // UNITS_PER_MEMBER)
    while hidden_size % m:
        m -= 1
    return m


@dataclass
class RunResult:
    model: RecurrentModel
    data: object
    fit: object
    evaluation: dict
    meta: dict = field(default_factory=dict)


def load_prepared(spec: DataSpec):
    from .calendar import add_calendar, add_identity
    series = load_series(spec.data, spec.target, list(spec.features) or None, spec.time_col,
                         spec.exclude, spec.max_gap, spec.units, spec.delimiter, spec.decimal, spec.skip_rows,
                         spec.timezone, 3600.0 * spec.utc_offset_hours, spec.series_col, spec.only_series,
                         spec.resample_s)
    return prepare(add_identity(add_calendar(series, spec.calendar), spec.series_input), spec.horizon)


def train_once(data, ms: ModelSpec, tc: TrainConfig, progress=True) -> RunResult:
    """Build a model for `data`, fit it, and evaluate it on the test split (with --base auto, from
    the AR base too when the level's model loses to it: `second_base`)."""
    model = new_model(data, ms, tc)
    run = finish(model, data, ms, fit(model, data, tc, progress=progress))
    return second_base(run, ms, tc, progress) if ms.base == "auto" else run


def second_base(run: RunResult, ms: ModelSpec, tc: TrainConfig, progress=True, refit=None) -> RunResult:
    """A model trained from the level that loses to the AR base alone (train/base.choose_base) on
    validation at some horizon step: train a second one from that AR base and keep the one with the
    lower validation MAE (train/base.py says why). Not after Ctrl-C; --max-minutes covers both.
    run.meta['base_choice'] records what was compared. `refit(base, tc) -> RunResult` trains the
    second one (data-parallel training passes its own); by default here, in this process."""
    data, cfg = run.data, run.model.cfg
    ar = choose_base(data, cfg.residual_input) if cfg.residual_input is not None and not cfg.base else ()
    if not ar:
        return run
    level, linear = val_step_mae(run.model, data), base_step_mae(data, cfg.residual_input, ar)
    left = tc.max_minutes - run.fit.seconds / 60.0           # --max-minutes covers both trainings
    if ((level < linear).all() or run.fit.stopped == "interrupted"
            or (tc.max_minutes and left < 0.1 * tc.max_minutes)):
        return run
    if progress:
        print(f"the level's model loses to the {base_name(ar)} base alone on validation at step(s) "
              f"{', '.join(f'+{k + 1}' for k in np.nonzero(level >= linear)[0])}: training from that base too")
    tc = replace(tc, max_minutes=left) if tc.max_minutes else tc
    if refit is None:
        model = new_model(data, ms, tc, base=ar)
        again = finish(model, data, ms, fit(model, data, tc, progress=progress))
    else:
        again = refit(ar, tc)
    from_ar = val_step_mae(again.model, data)
    keep = again if from_ar.mean() < level.mean() else run
    keep.meta["base_choice"] = {"level_val_mae": [float(v) for v in level], "base_alone_val_mae": [float(v) for v in linear],
                                "from_base_val_mae": [float(v) for v in from_ar], "kept": base_name(keep.model.cfg.base),
                                "first_seconds": run.fit.seconds}
    return keep


def new_model(data, ms: ModelSpec, tc: TrainConfig, base=None) -> RecurrentModel:
    """The untrained model for `data`, its weights drawn from `tc.seed` (every data-parallel replica draws
    the same); its residual's base `base`, or when None the one ms.base chooses."""
    from .fit import set_determinism
    set_determinism(tc)  # seeds the weight init too
    residual = data.target_feature if ms.residual else None
    base = base_for(data, residual, ms.base) if base is None else base
    cfg = RecurrentConfig(input_size=data.x.shape[1], hidden_size=ms.hidden_size, num_layers=ms.num_layers,
                          horizon=data.horizon, dropout=ms.dropout, cell=ms.cell, residual_input=residual,
                          members=members_for(ms.hidden_size, ms.members), base=base,
                          series_base=series_bases_for(data, residual, base, ms.series_base))
    return RecurrentModel(cfg)


def finish(model: RecurrentModel, data, ms: ModelSpec, result) -> RunResult:
    """After fitting: the deadband fitted on validation (when asked), then the test split's evaluation."""
    if ms.deadband:
        model.cfg = replace(model.cfg, deadband=fit_deadband(model, data),
                            series_deadband=fit_series_deadband(model, data))
    ev = evaluate(model, data, "test", window=ms.eval_window)
    return RunResult(model, data, result, ev)


def summary(run: RunResult) -> dict:
    """JSON-ready metrics: test metrics per model, streamed/windowed ratio, training facts."""
    models = run.evaluation["models"]
    cell = run.model.cfg.cell.upper()
    streamed = models[f"{cell} streamed"]
    windowed = next(v for k, v in models.items() if k.startswith(f"{cell} windowed"))
    return {"test": models, "origins": run.evaluation["origins"], "mase_scale": run.evaluation["scale"],
            "streamed_over_windowed_mae": streamed["mae"] / windowed["mae"],
            "parameters": count_parameters(run.model), "best_epoch": run.fit.best_epoch,
            "epochs_run": len(run.fit.history), "best_val_loss": run.fit.best_val,
            "skipped_steps": run.fit.skipped_steps, "train_seconds": run.fit.seconds, "stopped": run.fit.stopped,
            "seconds_per_epoch": run.fit.seconds / max(1, len(run.fit.history)),
            "base": base_name(run.model.cfg.base),
            **({"series_base": {sid: base_name(b) for sid, b in run.model.cfg.series_base}}
               if run.model.cfg.series_base else {}),
            **({"base_choice": run.meta["base_choice"]} if run.meta.get("base_choice") else {}),
            **({"series_best_epoch": series_best_epochs(run.fit)} if len(run.data.series.parts) > 1 else {}),
            **({"test_per_series": run.evaluation["per_series"]} if run.evaluation.get("per_series") else {})}


def series_section(data) -> dict:
    """The prepared series as later stages need it: raw inputs, horizon targets, segments, splits.

    Export writes it beside the bundle for quantize (calibration and drift streams), so that
    neither needs this module, pandas or the original CSV again.
    """
    import torch
    from .evaluate import persistence_scale
    return {"inputs": torch.from_numpy(data.series.inputs.astype(np.float32)),
            "targets": torch.from_numpy(data.y_raw.astype(np.float32)),
            "segments": [list(map(int, s)) for s in data.series.segments],
            "start_s": data.series.start_s,
            "shifts": [[int(r), float(sec)] for r, sec in data.series.shifts],
            "splits": {k: [list(map(int, r)) for r in v] for k, v in data.splits.items()},
            "mase_scale": [float(v) for v in persistence_scale(data)],
            "parts": [[p.id, p.start, p.stop, p.start_s] for p in data.series.parts],
            "scalers": {k: {"inputs": i.to_dict(), "targets": o.to_dict()} for k, (i, o) in data.series_scalers.items()}}


def save_run(run: RunResult, out: str, spec: DataSpec, tc: TrainConfig, ms: ModelSpec) -> dict:
    """Checkpoint at `out`, plus <stem>.metrics.json, <stem>.curves.png, <stem>.forecast.png.

    Each fact once: the horizon lives in the model config, the target's name in `target`, the
    input statistics in `in_scaler`.
    """
    from .plots import plot_curves, plot_forecast, plot_steps
    data, series = run.data, run.data.series
    metrics = summary(run)
    spec_fields = {k: v for k, v in asdict(spec).items() if k != "horizon"}
    spec_fields.update(delimiter=series.report.delimiter, decimal=series.report.decimal)   # as read (the device reads alike)
    meta = {"features": list(series.features), "derived_inputs": series.derived, "units": dict(series.units),
            "series_units": series.series_units,
            "target": series.target_name, "period_s": series.period_s, "phase_s": series.phase_s, "in_scaler": data.in_scaler.to_dict(), "out_scaler": data.out_scaler.to_dict(),
            "metrics": metrics, "history": run.fit.history, "train_config": asdict(tc),
            "model_spec": asdict(ms), "data_spec": spec_fields, "data_hash": series.data_hash(),
            "data_source": series.source, "data_report": asdict(series.report), "series": series_section(data),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_checkpoint(out, run.model, meta)
    stem = os.path.splitext(out)[0]
    report = {"metrics": metrics, "history": run.fit.history, "data_report": asdict(series.report)}
    write_atomically(stem + ".metrics.json", lambda f: json.dump(plain(report), f, indent=2), "w")
    plot_curves(run.fit.history, stem + ".curves.png")
    pos = run.evaluation["_positions"]
    unit = series.units.get(series.target_name, "")
    plot_forecast(data.y_raw[pos], run.evaluation["_streamed"], series.target_name, unit, stem + ".forecast.png")
    plot_steps(metrics["test"], series.target_name, unit, series.period_s, stem + ".steps.png")
    return metrics


def verdict(run: RunResult) -> list[str]:
    """Plain sentences: does the streamed model beat each baseline, and the streaming gap."""
    models = run.evaluation["models"]
    cell = run.model.cfg.cell.upper()
    mine = models[f"{cell} streamed"]["mase"]
    lines = []
    for name, m in models.items():
        if name.startswith(cell):
            continue
        if mine < m["mase"]:
            lines.append(f"beats {name}: streamed MASE {mine:.3f} < {m['mase']:.3f}")
        elif m["mase"] > 0:
            lines.append(f"falls short of {name}: streamed MASE {mine:.3f} vs {m['mase']:.3f} "
                         f"({100 * (mine / m['mase'] - 1):.1f}% worse)")
        else:
            lines.append(f"falls short of {name}: streamed MASE {mine:.3f} vs 0 ({name} is exact on the test split: "
                         "does the target stop moving there?)")
    lines += step_verdict(models, cell)
    lines += series_verdict(run.evaluation)
    ratio = summary(run)["streamed_over_windowed_mae"]
    lines.append(f"streamed / windowed MAE = {ratio:.3f} (target <= 1.1)")
    c = run.meta.get("base_choice")
    if c:
        lines.append(f"base {c['kept']}: trained from the level (validation MAE {np.mean(c['level_val_mae']):.4g}, "
                     f"normalized), which lost to the AR base alone ({np.mean(c['base_alone_val_mae']):.4g}), then from "
                     f"that base ({np.mean(c['from_base_val_mae']):.4g}); the lower kept")
    own = run.model.cfg.series_base
    if own:
        lines.append(f"{len(own)} series forecast from their own base, the rest from the model's "
                     f"{base_name(run.model.cfg.base)}: " + ", ".join(f"{sid[:40]} {base_name(b)}" for sid, b in own[:12])
                     + (", ..." if len(own) > 12 else ""))
    return lines + held_lines(run.model.cfg) + _series_epochs_line(run.fit)


def held_lines(cfg) -> list[str]:
    """The steps the deadband holds at no change (train/deadband.HOLD: the model's changes there never
    paid on validation, so they forecast what persistence does), the model's and each series' own."""
    def held(tau):
        return [f"+{k + 1}" for k, t in enumerate(tau or ()) if t >= HOLD]
    lines = [f"the deadband holds step(s) {', '.join(held(cfg.deadband))} at no change: the model's changes there "
             "never paid on validation"] if held(cfg.deadband) else []
    own = [(sid, held(tau)) for sid, tau in cfg.series_deadband or () if held(tau)]
    if own:
        lines.append(f"{len(own)} series' own deadbands hold steps at no change: "
                     + ", ".join(f"{sid[:40]} {' '.join(h)}" for sid, h in own[:12]) + (", ..." if len(own) > 12 else ""))
    return lines


def _series_epochs_line(fit_result) -> list[str]:
    """Many series: the epoch at which each series' own validation loss was lowest, against the one kept
    (a series still improving at the last epoch wanted more training than the pooled loss gave it)."""
    best, last = series_best_epochs(fit_result), len(fit_result.history)
    if not best:
        return []
    late = [sid for sid, e in best.items() if e == last]
    return [f"validation per series: the model kept epoch {fit_result.best_epoch} of {last}; each series' best: "
            + ", ".join(f"{sid[:40]} {e}" for sid, e in list(best.items())[:12]) + (", ..." if len(best) > 12 else "")
            + (f"; still improving at the last epoch: {', '.join(s[:40] for s in late[:12])}" if late else "")]


def step_verdict(models: dict, cell: str) -> list[str]:
    """The streamed model per horizon step against the best baseline at that step (by MAE), and sMAPE."""
    base = {k: v for k, v in models.items() if not k.startswith(cell)}
    mine = f"{cell} streamed"
    if not base:
        return []
    mae = np.asarray(models[mine]["per_step"]["mae"])
    best = np.min([v["per_step"]["mae"] for v in base.values()], axis=0)
    lose = [k + 1 for k in np.flatnonzero(mae >= best)]
    lines = [f"per step: loses to the best baseline at step(s) {', '.join(map(str, lose))} (MAE)" if lose
             else "per step: beats the best baseline at every horizon step (MAE)"]
    worse = [k for k, v in base.items() if v["smape"] < models[mine]["smape"]]
    if worse:
        lines.append(f"sMAPE: worse than {', '.join(worse)}")
    return lines


def report_text(run: RunResult) -> str:
    per = series_table(run.evaluation)
    return (metrics_table(run.evaluation) + "\n\n" + step_table(run.evaluation) + "\n"
            + (per + "\n" if per else "")
            + "\n".join("  " + s for s in verdict(run)))
