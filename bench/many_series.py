"""`python -m bench.many_series`: one global model over many real series, against the baselines and
against one model per series trained alone (the many-series issue's goals, measured).

Two long-format sets, cut from the bundled real data (nothing is downloaded):
- `rooms`: the demo's nine rooms (Appliances, 10-minute), one series per room: node roomN, the
  room's temperature TN as `value` and its humidity RH_N as `rh`, beside the outdoor T_out and RH_out;
- `mixed`: the nine rooms' temperatures resampled to hourly means beside the hourly traffic volume
  (its last 8,000 rows): series about 150x apart in scale, one `value` column.

Each is trained with `python -m train --series-col node --compare-local N` (the N series with the
most training rows also trained alone) and `--max-minutes` as a budget for the global model. The
summary per set: per series, the global model's verdict against every baseline per step
(`metrics.test_per_series`) and the global/local ratio. bench/many_series.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from .datasets import HERE

ROOT = os.path.dirname(HERE)


def rooms_frame(hourly: bool = False):
    """The nine rooms as a long table: time, node, value (TN), and without `hourly` rh, T_out, RH_out."""
    import pandas as pd
    from train.data import dataset_path
    from train.table import read_table
    df = read_table(dataset_path("appliances"))
    df["date"] = pd.to_datetime(df["date"])
    parts = []
    for i in range(1, 10):
        room = df[["date", f"T{i}", f"RH_{i}", "T_out", "RH_out"]].rename(
            columns={"date": "time", f"T{i}": "value", f"RH_{i}": "rh"})
        if hourly:
            room = room[["time", "value"]].set_index("time").resample("1h").mean().reset_index()
        parts.append(room.assign(node=f"room{i}"))
    return pd.concat(parts, ignore_index=True)


def mixed_frame():
    """The rooms hourly beside the last 8,000 hourly traffic volumes: scales about 150x apart."""
    import pandas as pd
    from train.data import dataset_path
    from train.table import read_table
    t = read_table(dataset_path("traffic"))
    t = pd.DataFrame({"time": pd.to_datetime(t["date_time"]), "value": t["traffic_volume"].astype(float)})
    t = t.drop_duplicates("time").iloc[-8000:].assign(node="traffic")
    return pd.concat([rooms_frame(hourly=True), t], ignore_index=True)


def train_set(name: str, frame, out: str, local: int, minutes: float) -> dict:
    """`python -m train` on the set; its per-series verdict and the global/local table."""
    os.makedirs(out, exist_ok=True)
    csv, ck = os.path.join(out, f"{name}.csv"), os.path.join(out, f"{name}.pt")
    frame.to_csv(csv, index=False)
    p = subprocess.run([sys.executable, "-m", "train", "--data", csv, "--target", "value", "--series-col", "node",
                        "--compare-local", str(local), "--max-minutes", str(minutes), "--quiet", "--out", ck],
                       cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"train on {name} exited {p.returncode}: {p.stderr[-1500:]}")
    per = json.load(open(os.path.join(out, f"{name}.metrics.json")))["metrics"]["test_per_series"]
    series = {}
    for sid, models in per.items():
        gru = models["GRU streamed"]["per_step"]["mae"]
        lost = {k: [i + 1 for i, (g, b) in enumerate(zip(gru, v["per_step"]["mae"])) if g >= b]
                for k, v in models.items() if not k.startswith("GRU")}
        series[sid] = {"gru_mae": models["GRU streamed"]["mae"], "steps_lost": {k: v for k, v in lost.items() if v}}
    beats_all = sum(not s["steps_lost"] for s in series.values())
    return {"set": name, "series": series, "beats_every_baseline_every_step": beats_all, "of": len(series),
            "local": json.load(open(os.path.join(out, f"{name}.local.json")))}


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [f"## {r['set']}: the global model beats every baseline at every step on "
                  f"{r['beats_every_baseline_every_step']} of {r['of']} series (goal: >= 90%)", "",
                  "| series | GRU MAE | baselines it loses to (steps) |", "|---|---|---|"]
        for sid, s in r["series"].items():
            lost = "; ".join(f"{k} ({', '.join(f'+{i}' for i in v)})" for k, v in s["steps_lost"].items()) or "none"
            lines.append(f"| {sid} | {s['gru_mae']:.4g} | {lost} |")
        lines += ["", "| series | training rows | global MAE | local MAE | global / local | worst step | goal |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {x['series']} | {x['train_rows']} | {x['global_mae']:.4g} | {x['local_mae']:.4g} | "
                  f"{x['global_over_local']:.3f} | {x['worst_step_ratio']:.3f} | {x['goal']} |" for x in r["local"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.many_series", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/many_series", help="the sets' CSVs and checkpoints go here")
    p.add_argument("--local", type=int, default=3, help="series also trained alone, per set (the largest)")
    p.add_argument("--minutes", type=float, default=6.0, help="time budget of each global model")
    a = p.parse_args(argv)
    results = [train_set("rooms", rooms_frame(), a.out, a.local, a.minutes),
               train_set("mixed", mixed_frame(), a.out, a.local, a.minutes)]
    with open(os.path.join(HERE, "many_series.json"), "w") as f:
        json.dump(results, f, indent=2)
    text = markdown(results)
    with open(os.path.join(HERE, "many_series.md"), "w") as f:
        f.write("# One global model over many series (`python -m bench.many_series`)\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
