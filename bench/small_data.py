"""`python -m bench.small_data`: the small-data rule of the many-series issue, measured.

A series of 1,000-2,000 rows trained alone with `python -m train`'s defaults must beat every
baseline (persistence, seasonal naive, AR, ridge) at every horizon step, for 3 of 3 seeds. The
slices, cut from the bundled real sets so that nothing is downloaded and each has a daily cycle:
- Yosemite air temperature resampled to hourly means, its last 1,300 rows (about 7 weeks);
- traffic volume (hourly), its last 1,500 rows (columns flat over the slice's training part, such as
  snow in summer, left out: train refuses a constant input);
- the demo's kitchen temperature T1 (10-minute, 26 channels), its last 2,000 rows (about 2 weeks).

Each slice is written as a CSV to OUT (default build/small_data) and trained for seeds 0, 1, 2
(here, or as Ray tasks with --ray ADDRESS or RAY_ADDRESS); the GRU's streamed test MAE per step is
set against the best baseline at that step. The summary: bench/small_data.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os

from .datasets import HERE, SEEDS, quality

SLICES = {   # name: (bundled set, hourly resample?, rows from the end)
    "yosemite_hourly_1300": ("yosemite", True, 1300),
    "traffic_1500": ("traffic", False, 1500),
    "appliances_2000": ("appliances", False, 2000),
}


def write_slice(name: str, out: str) -> str:
    """The slice as OUT/<name>.csv (time column first); returns its path."""
    import pandas as pd
    from train.data import DATASETS, dataset_path
    from train.table import read_table
    src, hourly, rows = SLICES[name]
    spec = DATASETS[src]
    df = read_table(dataset_path(src))
    df = df.drop(columns=[c for c in df.columns if c in spec["exclude"]])     # noise columns, labels
    df[spec["time_col"]] = pd.to_datetime(df[spec["time_col"]])
    if hourly:
        df = df.set_index(spec["time_col"]).select_dtypes("number").resample("1h").mean().reset_index()
    df = df.iloc[-rows:]
    head = df.iloc[:int(0.7 * rows)].select_dtypes("number")
    df = df.drop(columns=[c for c in head.columns if head[c].nunique() < 2])   # flat in the slice (snow in summer)
    path = os.path.join(out, f"{name}.csv")
    os.makedirs(out, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def run(out: str, address: str | None) -> list[dict]:
    from train.cluster import Job, run_jobs
    from train.fit import TrainConfig
    from train.pipeline import DataSpec, ModelSpec, save_run
    from train.data import DATASETS
    jobs = []
    for name, (src, _, _) in SLICES.items():
        spec = DataSpec(write_slice(name, out), DATASETS[src]["target"])
        jobs += [Job({"slice": name, "seed": s}, spec, ModelSpec(), TrainConfig(seed=s)) for s in SEEDS]
    rows = []
    for o in run_jobs(jobs, address):
        ck = os.path.join(out, f"{o.job.key['slice']}_s{o.job.train.seed}.pt")
        save_run(o.run, ck, o.job.data, o.job.train, o.job.model)
        metrics = json.load(open(os.path.splitext(ck)[0] + ".metrics.json"))["metrics"]
        rows.append({**o.job.key, **quality(metrics)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| slice | seed | GRU MAE | best baseline (MAE) | steps lost (GRU >= best baseline) | passes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lost = ", ".join(f"+{k}" for k in r["losing_steps"]) or "none"
        lines.append(f"| {r['slice']} | {r['seed']} | {r['gru_mae']:.4g} | {r['best_baseline']} ({r['best_baseline_mae']:.4g}) "
                     f"| {lost} | {r['epochs']} |")
    won = sum(not r["losing_steps"] for r in rows)
    lines += ["", f"The rule (every step beaten) holds in {won} of {len(rows)} runs."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from train.cluster import ray_address
    p = argparse.ArgumentParser(prog="python -m bench.small_data", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/small_data", help="slices and checkpoints go here")
    p.add_argument("--ray", metavar="ADDRESS", help="train on the Ray cluster at ADDRESS (or RAY_ADDRESS)")
    a = p.parse_args(argv)
    rows = run(a.out, ray_address(a.ray))
    with open(os.path.join(HERE, "small_data.json"), "w") as f:
        json.dump(rows, f, indent=2)
    text = markdown(rows)
    with open(os.path.join(HERE, "small_data.md"), "w") as f:
        f.write("# Small data trained alone (`python -m bench.small_data`)\n\n" + text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
