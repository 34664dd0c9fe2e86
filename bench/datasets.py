"""`python -m bench.datasets`: forecast quality and int8 drift on the three bundled data sets.

For each data set (the demo, the 5-minute Yosemite temperatures, the hourly traffic volumes) and
seed 0, 1, 2: a training with `python -m train`'s defaults (the nine one after another here, or as
tasks on a Ray cluster with --ray ADDRESS or RAY_ADDRESS: the same checkpoints), then the streamed
test MAE per horizon step of the GRU against the best baseline at that step. For seed 0 also
`python -m export` and `python -m quantize`, and the drift of every int8 artifact over the test
split. Everything goes into OUT (default build/datasets); the summary goes to bench/datasets.md
and bench/datasets.json. About 20 minutes on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DATASETS = ("appliances", "yosemite", "traffic")
SEEDS = (0, 1, 2)
HERE = os.path.dirname(os.path.abspath(__file__))


def _run(*args) -> float:
    """Run `python -m ...`; returns its wall-clock seconds."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", *args], cwd=os.path.dirname(HERE), capture_output=True, text=True)
    if p.returncode not in (0, 1) or (p.returncode == 1 and args[0] != "quantize"):
        raise RuntimeError(f"{' '.join(args)} exited {p.returncode}: {p.stderr[-1500:]}")
    return time.perf_counter() - t0


def train_all(names, out: str, address: str | None, reuse: bool) -> None:
    """Every data set x seed trained with train's defaults and saved as OUT/<name>_s<seed>.pt (with
    --reuse, those already there are kept): one after another here, or as Ray tasks at `address`."""
    from train.cluster import Job, run_jobs
    from train.fit import TrainConfig
    from train.pipeline import DataSpec, ModelSpec, save_run
    jobs = [Job({"data": name, "seed": seed}, DataSpec(name), ModelSpec(), TrainConfig(seed=seed))
            for name in names for seed in SEEDS
            if not (reuse and os.path.exists(os.path.join(out, f"{name}_s{seed}.metrics.json")))]
    for o in run_jobs(jobs, address):
        save_run(o.run, os.path.join(out, f"{o.job.key['data']}_s{o.job.train.seed}.pt"), o.job.data, o.job.train,
                 o.job.model)


def quality(metrics: dict) -> dict:
    """GRU streamed vs the best baseline, overall and per step, from a checkpoint's metrics.json."""
    test = metrics["test"]
    base = {k: v for k, v in test.items() if not k.startswith("GRU")}
    best_name = min(base, key=lambda k: base[k]["mae"])
    gru = test["GRU streamed"]["per_step"]["mae"]
    best = [min(v["per_step"]["mae"][k] for v in base.values()) for k in range(len(gru))]
    return {"gru_mae": test["GRU streamed"]["mae"], "best_baseline": best_name, "best_baseline_mae": base[best_name]["mae"],
            "gru_per_step": gru, "best_per_step": best, "losing_steps": [k + 1 for k, (g, b) in enumerate(zip(gru, best)) if g >= b],
            "train_seconds": metrics["train_seconds"], "epochs": metrics["epochs_run"]}


def drift(manifest: dict) -> list[dict]:
    rows = []
    for file, d in manifest["drift"]["artifacts"].items():
        c, t = d["continuous"]["vs_float"], d["task"]
        rows.append({"artifact": file, "chosen": d["chosen"], "precise_ops": d.get("precise_ops", []),
                     "rmse_over_std": c["rmse_over_std"], "max_abs_over_std": c["max_abs_over_std"],
                     "mae_change": t["mae_change"], "size_ratio": d["size_ratio"], "over_budget": d["over_budget"]})
    return rows


def table(results: dict) -> str:
    lines = ["| data set | seed | GRU MAE | best baseline (MAE) | GRU / best, per step | loses at | training |",
             "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        for seed, q in runs["seeds"].items():
            ratios = " ".join(f"{g / b:.3f}" for g, b in zip(q["gru_per_step"], q["best_per_step"]))
            lines.append(f"| {name} | {seed} | {q['gru_mae']:.4g} | {q['best_baseline']} ({q['best_baseline_mae']:.4g}) | "
                         f"{ratios} | {', '.join(map(str, q['losing_steps'])) or 'no step'} | "
                         f"{q['train_seconds']:.0f} s, {q['epochs']} epochs |")
    lines += ["", "| data set | artifact | chosen on validation | RMSE vs float | max | MAE change | size vs float | budget |",
              "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        for r in runs["drift"]:
            lines.append(f"| {name} | {r['artifact']} | {r['chosen']} | {100 * r['rmse_over_std']:.2f}% | "
                         f"{100 * r['max_abs_over_std']:.2f}% | {100 * r['mae_change']:+.2f}% | {100 * r['size_ratio']:.0f}% | "
                         f"{'; '.join(r['over_budget']) or 'within'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__)
    p.add_argument("--out", default="build/datasets")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--reuse", action="store_true", help="keep checkpoints already in OUT (training is deterministic)")
    p.add_argument("--ray", metavar="ADDRESS", help="train on the Ray cluster at HOST:PORT (or auto); RAY_ADDRESS "
                                                    "is read when this is not given")
    a = p.parse_args(argv)
    from train.cluster import ray_address
    os.makedirs(a.out, exist_ok=True)
    names = a.datasets.split(",")
    if set(names) - set(DATASETS):
        p.error(f"--datasets {a.datasets!r}: expected names from {', '.join(DATASETS)}")
    train_all(names, a.out, ray_address(a.ray), a.reuse)
    results = {}
    for name in names:
        runs = {"seeds": {}, "drift": []}
        for seed in SEEDS:
            ck = os.path.join(a.out, f"{name}_s{seed}.pt")
            with open(ck[:-3] + ".metrics.json") as f:
                runs["seeds"][seed] = quality(json.load(f)["metrics"])
            print(f"{name} seed {seed}: {runs['seeds'][seed]}", flush=True)
        bundle = os.path.join(a.out, name)
        _run("export", os.path.join(a.out, f"{name}_s0.pt"), "--out", bundle, "--force")
        runs["quantize_seconds"] = _run("quantize", bundle, "--allow-drift")
        with open(os.path.join(bundle, "manifest.json")) as f:
            runs["drift"] = drift(json.load(f))
        results[name] = runs
    meta = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "results": results}
    with open(os.path.join(HERE, "datasets.json"), "w") as f:
        json.dump(meta, f, indent=2)
    with open(os.path.join(HERE, "datasets.md"), "w") as f:
        f.write(f"# Forecast quality and int8 drift on the bundled data sets ({meta['date']}, "
                f"`python -m bench.datasets`)\n\n{table(results)}\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
