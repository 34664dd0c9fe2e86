"""Hyperparameter grid search (validation-scored) and the GRU vs LSTM comparison."""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import replace

from .checkpoint import write_atomically
from .fit import TrainConfig
from .model import count_parameters
from .cluster import Job, Outcome, run_jobs
from .pipeline import DataSpec, ModelSpec, train_once

DEFAULT_GRID = {"hidden_size": [16, 32, 64], "num_layers": [1, 2], "lr": [2e-3], "dropout": [0.0, 0.1], "members": [0]}
_TYPES = {"hidden_size": int, "num_layers": int, "lr": float, "dropout": float, "members": int}


def parse_grid(text: str | None) -> dict:
    """'hidden_size=16,32;lr=0.001,0.003' → {'hidden_size': [16, 32], 'lr': [0.001, 0.003]} (members 0: auto)."""
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
    return {**DEFAULT_GRID, **grid}


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
    fmt = lambda v: f"{v:.5g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_table(rows: list[dict], path: str, title: str, notes: str = "") -> None:
    """`path` (markdown) and the same rows as JSON beside it, each written atomically."""
    write_atomically(os.path.splitext(path)[0] + ".json", lambda f: json.dump(rows, f, indent=2), "w")
    write_atomically(path, lambda f: f.write(f"# {title}\n\n{markdown_table(rows)}\n\n{notes}\n"), "w")
