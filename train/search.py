"""Hyperparameter grid search (validation-scored) and the GRU vs LSTM comparison."""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import replace

from runtime.readings import md_text

from .checkpoint import write_atomically
from .fit import TrainConfig
from .model import count_parameters
from .cluster import Job, Outcome, run_jobs
from .evaluate import lost_steps
from .pipeline import DataSpec, ModelSpec, train_once

DEFAULT_GRID = {"hidden_size": [16, 32, 64], "num_layers": [1, 2], "lr": [2e-3], "dropout": [0.0, 0.1], "members": [0]}
_TYPES = {"hidden_size": int, "num_layers": int, "lr": float, "dropout": float, "members": int}


def parse_grid(text: str | None) -> dict:
    """'hidden_size=16,32;lr=0.001,0.003' → {'hidden_size': [16, 32], 'lr': [0.001, 0.003]}: the keys left out
    keep the run's settings; no text: DEFAULT_GRID (members 0: auto)."""
    if not text:
        return dict(DEFAULT_GRID)
    grid = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = part.partition("=")
        key = key.strip()
        if key not in _TYPES:
            raise ValueError(f"unknown search parameter '{key}'; expected one of {', '.join(_TYPES)}")
        try:
            grid[key] = [_TYPES[key](v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"search values for {key} must be {_TYPES[key].__name__}s, got '{values}'") from None
    return grid


def parameter_grid(grid: dict):
    keys = sorted(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        yield dict(zip(keys, values))


def search(data, spec: DataSpec, ms: ModelSpec, tc: TrainConfig, grid: dict, address: str | None = None,
           progress=True):
    """Train every grid point: here, or as tasks on the Ray cluster at `address` (train/cluster.py).

    Returns (rows sorted by validation loss, (best validation loss, its run, ModelSpec, TrainConfig));
    the best is the first grid point with the lowest loss, wherever the points ran.
    """
    jobs = []
    for point in parameter_grid(grid):
        m = replace(ms, **{k: v for k, v in point.items() if k != "lr"})
        jobs.append(Job(point, spec, m, replace(tc, lr=point.get("lr", tc.lr))))
    rows, best = [], None
    for o in run_jobs(jobs, address, {spec: data}, say=print if progress else _silent):
        run, m = o.run, o.job.model
        streamed = run.evaluation["models"][f"{m.cell.upper()} streamed"]
        rows.append({**o.job.key, "val_loss": run.fit.best_val, "test_streamed_mase": streamed["mase"],
                     "parameters": count_parameters(run.model), "epochs": len(run.fit.history), **placement(o, address)})
        if best is None or run.fit.best_val < best[0]:
            best = (run.fit.best_val, run, m, o.job.train)
    rows.sort(key=lambda r: r["val_loss"])
    return rows, best


def seeds(data, spec: DataSpec, ms: ModelSpec, tc: TrainConfig, seed_list, address: str | None = None,
          progress=True) -> list[Outcome]:
    """The same run for each seed (here, or as tasks on the Ray cluster at `address`), in seed order."""
    jobs = [Job({"seed": s}, spec, ms, replace(tc, seed=s)) for s in seed_list]
    return run_jobs(jobs, address, {spec: data}, say=print if progress else _silent)


def seed_rows(outcomes: list[Outcome], address: str | None = None) -> list[dict]:
    """One table row per seed: validation loss, streamed test MAE and MASE, epochs, where it ran."""
    rows = []
    for o in outcomes:
        run = o.run
        streamed = run.evaluation["models"][f"{run.model.cfg.cell.upper()} streamed"]
        rows.append({"seed": o.job.train.seed, "val_loss": run.fit.best_val, "test_streamed_mae": streamed["mae"],
                     "test_streamed_mase": streamed["mase"], "epochs": len(run.fit.history),
                     "train_seconds": run.fit.seconds, **placement(o, address)})
    return rows


LOCAL_ROWS = 5000       # the goal: within LOCAL_MARGIN of the per-series model on a series with more training rows
LOCAL_MARGIN = 0.05


def compare_local(run, spec: DataSpec, ms: ModelSpec, tc: TrainConfig, n: int, address: str | None = None,
                  progress=True) -> list[dict]:
    """The global model `run` against a model per series trained on that series alone, with the same
    settings (here, or as tasks on the Ray cluster at `address`), for the n series with the most
    training rows: each scored on the same test split (MAE, streamed) overall and per step, and the steps
    where the series' own model loses to its best baseline (what one model per series would reach)."""
    data = run.data
    if len(data.series.parts) < 2:
        raise ValueError("--compare-local needs many series (--series-col, or a folder): the model was trained on one")
    rows_of = {p.id: int(sum(b - a for a, b in data.part(p).splits["train"])) for p in data.series.parts}
    chosen = sorted(run.evaluation["per_series"], key=lambda sid: (-rows_of[sid], sid))[:n]
    jobs = [Job({"series": sid}, replace(spec, only_series=sid), ms, tc) for sid in chosen]
    rows = []
    for o in run_jobs(jobs, address, say=print if progress else _silent):
        sid, cell = o.job.key["series"], ms.cell.upper()
        g = run.evaluation["per_series"][sid][f"{cell} streamed"]
        loc = o.run.evaluation["models"][f"{cell} streamed"]
        ratio = [a / b if b else float("inf") for a, b in zip(g["per_step"]["mae"], loc["per_step"]["mae"])]
        rows.append({"series": sid, "train_rows": rows_of[sid], "global_mae": g["mae"], "local_mae": loc["mae"],
                     "global_over_local": g["mae"] / loc["mae"] if loc["mae"] else float("inf"),
                     "worst_step_ratio": max(ratio),
                     "local_loses_steps": lost_steps(o.run.evaluation["models"]),
                     "goal": ("met" if max(ratio) <= 1 + LOCAL_MARGIN else "NOT MET") if rows_of[sid] > LOCAL_ROWS
                     else f"(<= {LOCAL_ROWS:,} rows)", **placement(o, address)})
    return rows


def placement(o: Outcome, address: str | None) -> dict:
    """Where a task ran, for the tables of cluster runs: its node and its attempts (2: retried once)."""
    return {} if address is None else {"node": o.node[:8], "attempts": o.attempts}


def _silent(*args, **kwargs):
    pass


def compare(data, ms: ModelSpec, tc: TrainConfig, progress=True) -> list[dict]:
    """GRU and LSTM at the same size and training budget."""
    out = []
    for cell in ("gru", "lstm"):
        run = train_once(data, replace(ms, cell=cell), tc, progress=progress)
        models = run.evaluation["models"]
        s = models[f"{cell.upper()} streamed"]
        out.append({"cell": cell, "parameters": count_parameters(run.model),
                    "seconds_per_epoch": run.fit.seconds / len(run.fit.history),
                    "epochs": len(run.fit.history), "val_loss": run.fit.best_val,
                    "test_streamed_mae": s["mae"], "test_streamed_rmse": s["rmse"],
                    "test_streamed_mase": s["mase"]})
    return out


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.5g}" if isinstance(v, float) else md_text(v)  # noqa: E731
    lines = ["| " + " | ".join(map(md_text, keys)) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_table(rows: list[dict], path: str, title: str, notes: str = "") -> None:
    """`path` (markdown) and the same rows as JSON beside it, each written atomically."""
    write_atomically(os.path.splitext(path)[0] + ".json", lambda f: json.dump(rows, f, indent=2), "w")
    write_atomically(path, lambda f: f.write(f"# {title}\n\n{markdown_table(rows)}\n\n{notes}\n"), "w")
