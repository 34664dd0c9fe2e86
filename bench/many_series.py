"""`python -m bench.many_series`: one global model over many real series, against the baselines and
against one model per series trained alone (the many-series issue's goals, measured).

Two long-format sets, cut from the bundled real data (nothing is downloaded):
- `rooms`: the demo's nine rooms (Appliances, 10-minute), one series per room: node roomN, the
  room's temperature TN as `value` and its humidity RH_N as `rh`, beside the outdoor T_out and RH_out;
- `mixed`: the nine rooms' temperatures resampled to hourly means beside the hourly traffic volume
  (its last 8,000 rows): series about 150x apart in scale, one `value` column;
- `siblings`: the rooms with three of them (room1, room5, room9, fixed before measuring) cut to
  their last two weeks, as sensors installed late: is each short room forecast better by the global
  model, beside six siblings with months of history, than by a model trained on its two weeks alone?

Each of the first two is trained with `python -m train --series-col node --compare-local N` (the N series with the
most training rows also trained alone) and `--max-minutes` as a budget for the global model. The
summary per set: per series, the global model's verdict against every baseline per step
(`metrics.test_per_series`) and the global/local ratio. bench/many_series.md and .json; with
`--series-base own` (each series' own AR base where it forecasts its validation better: `train
--series-base own`), bench/many_series_own_base.md and .json.
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


SHORT_ROOMS = ("room1", "room5", "room9")
SHORT_DAYS = 14


def siblings_frame():
    """The rooms (10-minute) with SHORT_ROOMS cut to their last SHORT_DAYS days."""
    import pandas as pd
    df = rooms_frame()
    end = df.groupby("node")["time"].transform("max")
    cut = df["node"].isin(SHORT_ROOMS) & (df["time"] <= end - pd.Timedelta(days=SHORT_DAYS))
    return df[~cut].reset_index(drop=True)


def _train(name: str, frame, out: str, *flags) -> dict:
    """`python -m train` on `frame` (written as OUT/NAME.csv); its metrics.json."""
    os.makedirs(out, exist_ok=True)
    csv, ck = os.path.join(out, f"{name}.csv"), os.path.join(out, f"{name}.pt")
    frame.to_csv(csv, index=False)
    p = subprocess.run([sys.executable, "-m", "train", "--data", csv, "--target", "value", *flags, "--quiet",
                        "--out", ck], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"train on {name} exited {p.returncode}: {p.stderr[-1500:]}")
    return json.load(open(os.path.join(out, f"{name}.metrics.json")))


def train_set(name: str, frame, out: str, local: int, minutes: float, *flags) -> dict:
    """`python -m train` on the set (with `flags`); its per-series verdict and the global/local table."""
    metrics = _train(name, frame, out, "--series-col", "node", "--compare-local", str(local),
                     "--max-minutes", str(minutes), *flags)["metrics"]
    local_rows = json.load(open(os.path.join(out, f"{name}.local.json")))
    return {"set": name, **verdicts(metrics["test_per_series"]), "local": local_rows}


def train_siblings(out: str, minutes: float, *flags) -> dict:
    """The `siblings` set: the global model, then each short room trained on its own two weeks alone
    (the same flags; the same grid and split, so the same test origins), compared per step."""
    from train.evaluate import lost_steps
    frame = siblings_frame()
    per = _train("siblings", frame, out, "--series-col", "node", "--max-minutes", str(minutes),
                 *flags)["metrics"]["test_per_series"]
    rows = []
    for sid in SHORT_ROOMS:
        alone = _train(f"siblings_{sid}", frame[frame["node"] == sid].drop(columns="node"), out,
                       "--max-minutes", str(minutes))
        g, loc = per[sid]["GRU streamed"], alone["metrics"]["test"]["GRU streamed"]
        ratio = [a / b for a, b in zip(g["per_step"]["mae"], loc["per_step"]["mae"])]
        rows.append({"series": sid, "rows": alone["data_report"]["rows"], "global_mae": g["mae"],
                     "local_mae": loc["mae"], "global_over_local": g["mae"] / loc["mae"],
                     "worst_step_ratio": max(ratio), "local_loses_steps": lost_steps(alone["metrics"]["test"]),
                     "goal": "met (better with siblings)" if g["mae"] < loc["mae"] else "NOT MET"})
    return {"set": "siblings", **verdicts(per), "local": rows}


TIE = 1e-3      # a lost step whose MAE is within 0.1% of the baseline's: counted as lost, marked as a tie


def verdicts(per: dict) -> dict:
    """Per series of `metrics.test_per_series`: the GRU's MAE, the steps it loses to each baseline
    (not strictly better), and which of those are ties (the deadband forecast no change, as persistence)."""
    series = {}
    for sid, models in per.items():
        gru = models["GRU streamed"]["per_step"]["mae"]
        lost, tied = {}, {}
        for k, v in models.items():
            if k.startswith("GRU"):
                continue
            pairs = list(enumerate(zip(gru, v["per_step"]["mae"]), 1))
            lost[k] = [i for i, (g, b) in pairs if g >= b]
            tied[k] = [i for i, (g, b) in pairs if g >= b and g <= b * (1 + TIE)]
        series[sid] = {"gru_mae": models["GRU streamed"]["mae"], "steps_lost": {k: v for k, v in lost.items() if v},
                       "steps_tied": {k: v for k, v in tied.items() if v}}
    beats_all = sum(not s["steps_lost"] for s in series.values())
    return {"series": series, "beats_every_baseline_every_step": beats_all, "of": len(series)}


SETS = {"rooms": rooms_frame, "mixed": mixed_frame, "siblings": siblings_frame}


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [f"## {r['set']}: the global model beats every baseline at every step on "
                  f"{r['beats_every_baseline_every_step']} of {r['of']} series (goal: >= 90%)", "",
                  "| series | GRU MAE | baselines it loses to (steps) |", "|---|---|---|"]
        for sid, s in r["series"].items():
            tied = s.get("steps_tied", {})
            lost = "; ".join(f"{k} ({', '.join(f'+{i}' + (' tied' if i in tied.get(k, ()) else '') for i in v)})"
                             for k, v in s["steps_lost"].items()) or "none"
            lines.append(f"| {sid} | {s['gru_mae']:.4g} | {lost} |")
        lines += ["", "| series | training rows | global MAE | local MAE | global / local | worst step | goal "
                      "| the local model loses to a baseline at |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {x['series']} | {x.get('train_rows') or str(x['rows']) + ' in all'} | {x['global_mae']:.4g} | {x['local_mae']:.4g} | "
                  f"{x['global_over_local']:.3f} | {x['worst_step_ratio']:.3f} | {x['goal']} | {_steps(x)} |" for x in r["local"]]
        lines.append("")
    return "\n".join(lines)


def _steps(row: dict) -> str:
    """The steps where a series' own model, trained alone, loses to its best baseline ('none': it beats
    every one at every step, what one model per series reaches); '?' in results from before it was kept."""
    lost = row.get("local_loses_steps")
    return "?" if lost is None else ", ".join(f"+{k}" for k in lost) or "none"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.many_series", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/many_series", help="the sets' CSVs and checkpoints go here")
    p.add_argument("--local", type=int, default=9, help="series also trained alone, per set (the largest): every "
                                                        "room, so the 5%%-of-local goal is checked on each")
    p.add_argument("--minutes", type=float, default=25.0,
                   help="time budget of each global model (6 minutes stopped the nine rooms' model by the budget at "
                        "epoch 39; given 25 it stops early at epoch 54, its best still epoch 39)")
    p.add_argument("--sets", default=",".join(SETS), help=f"which sets to measure ({', '.join(SETS)}); the others "
                                                          "keep their last results in bench/many_series.json")
    p.add_argument("--series-base", choices=("pooled", "own"), default="pooled",
                   help="the global models' `train --series-base`; own writes bench/many_series_own_base.*")
    a = p.parse_args(argv)
    own = a.series_base == "own"
    stem, flags = "many_series" + ("_own_base" if own else ""), ("--series-base", a.series_base)
    path = os.path.join(HERE, f"{stem}.json")
    kept = {r["set"]: r for r in (json.load(open(path)) if os.path.exists(path) else [])}
    for name in a.sets.split(","):
        if name not in SETS:
            p.error(f"--sets: unknown set {name!r}; expected some of {', '.join(SETS)}")
        kept[name] = (train_siblings(a.out, a.minutes, *flags) if name == "siblings" else
                      train_set(name, SETS[name](), a.out, a.local, a.minutes, *flags))
    results = [kept[name] for name in SETS if name in kept]
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    text = markdown(results)
    command = "python -m bench.many_series" + (" --series-base own" if own else "")
    with open(os.path.join(HERE, f"{stem}.md"), "w") as f:
        f.write(f"# One global model over many series (`{command}`)\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
