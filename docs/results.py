"""The measured-results page, from the results files: every table names its file, date, machine and command."""
from __future__ import annotations

import json
import os
import statistics

ENV_KEYS = ("cpu", "cores", "machine", "os")


def _load(root: str, rel: str, required: bool = True):
    """The results file as JSON; None (with the reason on the page) when an optional one is missing or broken."""
    try:
        with open(os.path.join(root, rel)) as f:
            return json.load(f), ""
    except (OSError, ValueError) as e:
        if required:
            raise SystemExit(f"docs/gen.py: {rel} is unreadable ({e}); expected the JSON its command writes")
        return None, f"_`{rel}` is not rendered: {type(e).__name__}: {e}._\n"


def _provenance(rel: str, command: str, date: str, machine: str) -> str:
    return f"Source `{rel}`, measured **{date}** on {machine}, by `{command}`.\n"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""]


def bench_section(r: dict) -> list[str]:
    m = r["machine"]
    where = ", ".join(str(m[k]) for k in ENV_KEYS if k in m) + \
        f"; Python {m['tools'].get('python', '?')}, " + ", ".join(f"{k} {v}" for k, v in m["tools"].items() if k != "python")
    out = ["## Speed, size and drift of the demo bundle\n",
           _provenance("bench/results.json", f"make bench  (python -m bench {r['bundle']} --out bench)", m["date"], where),
           f"Bundle `{r['bundle']}` (id `{r['bundle_id']}`).\n", "### One step, one stream (µs)\n"]
    rows = [[k, v.get("artifact", ""), f"{v.get('step_p50_us', v.get('p50_us', 0)):.1f}",
             f"{v.get('step_p99_us', v.get('p99_us', 0)):.1f}",
             f"{v['raw_p50_us']:.1f}" if "raw_p50_us" in v else ""] for k, v in r["latency_b1"].items()]
    out += _table(["engine/precision", "artifact", "step p50", "step p99", "engine call p50"], rows)
    out += ["### Throughput, 64 streams in one call\n"]
    out += _table(["engine/precision", "artifact", "stream-steps/s"],
                  [[k, v["artifact"], f"{v['stream_steps_per_s']:,.0f}"] for k, v in r["throughput_b64"].items()])
    out += ["### Artifact sizes and int8/int16 drift\n"]
    out += _table(["artifact", "bytes", "RMSE / std(y)", "max abs / std(y)"],
                  [[k, f"{b:,}", f"{r['drift'][k]['rmse_over_std']:.2%}" if k in r["drift"] else "",
                    f"{r['drift'][k]['max_abs_over_std']:.2%}" if k in r["drift"] else ""] for k, b in r["sizes"].items()])
    p, s = r["runtime_process"], r["soak"]
    out += ["### The runtime process\n",
            f"- import {p['import_s'] * 1000:.0f} ms, load {p['load_s'] * 1000:.1f} ms, peak RSS {p['peak_rss_mb']:.1f} MB "
            f"with `{p['engine']}`; heavy modules imported: {p['heavy_modules'] or 'none'}.",
            f"- soak: {s['steps']:,} steps with `{s['engine']}` in {s['seconds']:.1f} s, RSS growth "
            f"{s['rss_growth_mb']:.2f} MB, state resets {s['state_resets']}.\n"]
    load = r.get("serve_load", {})
    rows = [[f"{v['nodes']:,} nodes at {v['rate_hz']:g} Hz", f"{v.get('readings_per_s', v.get('received_per_s', ''))}",
             v.get("lost", ""), f"{v.get('cpu_percent_of_one_core', '')}", f"{v.get('peak_rss_mb', '')}"]
            for v in load.values() if isinstance(v, dict) and "nodes" in v]
    if rows:
        out += ["### `serve` under load (MQTT)\n"]
        out += _table(["load", "readings/s", "lost", "% of one core", "peak RSS MB"], rows)
    return out


def datasets_section(d: dict) -> list[str]:
    out = ["## Forecast quality on the bundled data sets\n",
           _provenance("bench/datasets.json", "python -m bench.datasets", d["date"], f"{d['cores']} cores"),
           "Mean absolute error on the test split (scaled units), over the seeds, against the best baseline.\n"]
    rows = []
    for name, v in d["results"].items():
        seeds = v["seeds"].values()
        gru = [s["gru_mae"] for s in seeds]
        base = next(iter(seeds))
        rows.append([name, len(gru), f"{statistics.mean(gru):.4f}", f"{min(gru):.4f} – {max(gru):.4f}",
                     base["best_baseline"], f"{base['best_baseline_mae']:.4f}",
                     f"{statistics.mean(s['train_seconds'] for s in seeds):.0f}"])
    return out + _table(["data", "seeds", "GRU MAE", "range", "best baseline", "its MAE", "train s"], rows)


def threads_section(t: dict) -> list[str]:
    out = ["## Training speed beside busy cores\n",
           _provenance("bench/train_threads.json", "python -m bench.train_threads", t["date"], f"{t['cores']} cores")]
    return out + _table(["busy cores", "threads", "s / epoch"],
                        [[r["busy_cores"], r["threads"], r["seconds_per_epoch"]] for r in t["rows"]])


def cluster_section(c: dict) -> list[str]:
    runs = c.get("fan_out") or []
    out = ["## Training on a Ray cluster\n",
           _provenance("bench/cluster.json", "python -m bench.cluster", c.get("date", "?"), f"{c.get('cores', '?')} cores")]
    if runs:
        met = sum(f["ratio"] <= 0.65 for f in runs)
        out += [f"The fan-out of 4 equal trainings over 2 one-CPU nodes, against the same 4 one after another "
                f"(goal <= 0.65x): met in {met} of {len(runs)} run(s).\n"]
        out += _table(["run", "trainings", "epochs", "sequential s", "cluster s", "ratio", "nodes", "same val losses"],
                      [[i + 1, f["trainings"], f["epochs"], f"{f['sequential_s']:.0f}", f"{f['cluster_s']:.0f}",
                        f"{f['ratio']:.2f}", f["nodes_used"], f["same_val_losses"]] for i, f in enumerate(runs)])
    return out


def results_page(root: str) -> str:
    out = ["# Measured results\n", "Every table on this page is generated from a results file in `bench/` "
           "(`make docs` rewrites it); each names the date, the machine and the command that measured it. "
           "Re-run the command to measure your own machine.\n"]
    out += bench_section(_load(root, "bench/results.json")[0])
    out += datasets_section(_load(root, "bench/datasets.json")[0])
    for rel, section in (("bench/train_threads.json", threads_section), ("bench/cluster.json", cluster_section)):
        data, why = _load(root, rel, required=False)
        out += section(data) if data is not None else [why]
    return "\n".join(out)


def headline(root: str) -> str:
    """The README's one table (between its `<!-- results -->` markers): the demo bundle's step on this machine."""
    r = _load(root, "bench/results.json")[0]
    m, lat = r["machine"], r["latency_b1"]
    sizes = r["sizes"]                      # a bundle's artifacts; a peer's (ExecuTorch's step.pte) has none here
    rows = [[k, v["artifact"], f"{sizes[v['artifact']]:,}" if v["artifact"] in sizes else "", f"{v['step_p50_us']:.1f}",
             f"{r['throughput_b64'][k]['stream_steps_per_s']:,.0f}" if k in r["throughput_b64"] else ""]
            for k, v in lat.items() if "artifact" in v]
    return "\n".join(_table(["engine/precision", "artifact", "bytes", "µs per step (p50)", "steps/s, 64 streams"], rows)) + \
        f"\nMeasured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['machine']}) by `make bench` " \
        "(`bench/results.json`; every figure: docs/results.md).\n"
