"""Hyperparameter grid search (validation-scored) and the GRU vs LSTM comparison."""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import replace

from .checkpoint import write_atomically
from .fit import TrainConfig
from .model import count_parameters
from .pipeline import ModelSpec, train_once

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


def search(data, ms: ModelSpec, tc: TrainConfig, grid: dict, progress=True):
    """Train every grid point; returns (rows sorted by validation loss, best RunResult)."""
    rows, best = [], None
    for point in parameter_grid(grid):
        m = replace(ms, **{k: v for k, v in point.items() if k != "lr"})
        t = replace(tc, lr=point.get("lr", tc.lr))
        run = train_once(data, m, t, progress=progress)
        streamed = run.evaluation["models"][f"{m.cell.upper()} streamed"]
        rows.append({**point, "val_loss": run.fit.best_val, "test_streamed_mase": streamed["mase"],
                     "parameters": count_parameters(run.model), "epochs": len(run.fit.history)})
        if best is None or run.fit.best_val < best[0]:
            best = (run.fit.best_val, run, m, t)
        print(f"  {point} val_loss={run.fit.best_val:.5f}", flush=True)
    rows.sort(key=lambda r: r["val_loss"])
    return rows, best


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
