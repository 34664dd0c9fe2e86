"""bench/REPORT.md and latency.png from the results dict."""
from __future__ import annotations

import os


def _latency_rows(lat: dict) -> list[str]:
    torch_p50 = lat["pytorch eager"]["p50_us"]
    rows = ["| engine / precision | artifact | Forecaster.step p50 | p99 | native call p50 (`invoke()`) | step / native | "
            "speed-up vs PyTorch eager (step) |", "|---|---|---|---|---|---|---|",
            f"| PyTorch eager (RecurrentModel, 1 thread) | checkpoint weights | {torch_p50:.1f} µs | "
            f"{lat['pytorch eager']['p99_us']:.1f} µs | | | 1.0× |"]
    if "pytorch nn.GRU call" in lat:     # less work than a forecast: no scaler, head or residual
        bare = lat["pytorch nn.GRU call"]
        rows.append(f"| PyTorch bare `nn.GRU` call (no scaler, head or residual) | checkpoint weights | "
                    f"{bare['p50_us']:.1f} µs | {bare['p99_us']:.1f} µs | | | {torch_p50 / bare['p50_us']:.1f}× |")
    for k, v in sorted(((k, v) for k, v in lat.items() if "artifact" in v), key=lambda kv: kv[1]["step_p50_us"]):
        rows.append(f"| {k} | {v['artifact']} | {v['step_p50_us']:.1f} µs | {v['step_p99_us']:.1f} µs | "
                    f"{v['raw_p50_us']:.1f} µs | {v['wrapper_ratio']:.2f} | {torch_p50 / v['step_p50_us']:.1f}× |")
    return rows


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lat = res["latency_b1"]
    names = ["pytorch eager"] + sorted((k for k, v in lat.items() if "artifact" in v), key=lambda k: lat[k]["step_p50_us"])
    step = [lat[k]["p50_us"] if k == "pytorch eager" else lat[k]["step_p50_us"] for k in names]
    raw = [0 if k == "pytorch eager" else lat[k]["raw_p50_us"] for k in names]
    fig, ax = plt.subplots(1, 2, figsize=(13, 4))
    ax[0].barh(names, step, label="Forecaster.step (normalize, checks, state)")
    ax[0].barh(names, raw, label="native call (invoke)")
    ax[0].set_xlabel("µs per step, B=1, p50"), ax[0].legend(fontsize=8), ax[0].invert_yaxis()
    thr = res["throughput_b64"]
    tn = sorted(thr, key=lambda k: -thr[k]["stream_steps_per_s"])
    ax[1].barh(tn, [thr[k]["stream_steps_per_s"] / 1e6 for k in tn])
    ax[1].set_xlabel("million stream-steps / s, 64 streams per call"), ax[1].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(res: dict, out: str) -> None:
    mc = res["machine"]
    lat, thr = res["latency_b1"], res["throughput_b64"]
    lines = [f"# Benchmark: {res['bundle']} (bundle {res['bundle_id']})", "",
             f"Measured {mc['date']} on {mc['cpu']}, {mc['cores']} cores, {mc['os']}; Python {mc['tools']['python']}, "
             f"numpy {mc['tools'].get('numpy')}, onnxruntime {mc['tools'].get('onnxruntime')}, ai-edge-litert "
             f"{mc['tools'].get('ai-edge-litert')}, torch {mc['tools'].get('torch')}. Reproduce: `make bench` "
             f"({res['seconds']:.0f} s). Every figure is from one process, engines interleaved in 5 rounds, "
             f"{lat['pytorch eager']['steps']:,} timed steps each after warm-up; one thread everywhere.", "",
             "## Latency per step, one stream (B=1)", ""] + _latency_rows(lat)
    lines += ["", "## Throughput, 64 streams per call", "", "| engine / precision | artifact | stream-steps/s |",
              "|---|---|---|"]
    for k, v in sorted(thr.items(), key=lambda kv: -kv[1]["stream_steps_per_s"]):
        lines.append(f"| {k} | {v['artifact']} | {v['stream_steps_per_s']:,.0f} |")
    sw = res["sweep"]
    keys = [k for k in sw[0] if k.endswith("p50 us")]
    lines += ["", "## Hidden size and layers (seeded models, 26 inputs, B=1: p50 µs of the engine's native "
              "call `invoke()`, and of `model(x, h)` for PyTorch eager)", "",
              "| hidden | layers | parameters | " + " | ".join(k.replace(" p50 us", "") for k in keys) + " |",
              "|---|---|---|" + "---|" * len(keys)]
    for r in sw:
        lines.append(f"| {r['hidden']} | {r['layers']} | {r['parameters']:,} | " + " | ".join(f"{r[k]:.1f}" for k in keys) + " |")
    rp = res["runtime_process"]
    lines += ["", "## The device side alone", "",
              f"A fresh process importing only the runtime ({rp['engine']} engine): import {1e3 * rp['import_s']:.0f} ms, "
              f"bundle load {1e3 * rp['load_s']:.0f} ms, peak RSS {rp['peak_rss_mb']:.0f} MB after {rp['steps']:,} steps; "
              f"workstation modules loaded: {', '.join(rp['heavy_modules']) or 'none'}."]
    if res.get("soak"):
        s = res["soak"]
        lines.append(f"Soak: {s['steps']:,} consecutive steps on {s['engine']} in {s['seconds']:.1f} s, RSS growth "
                     f"{s['rss_growth_mb']:.1f} MB, state finite at the end: {s['state_finite']}, state resets: "
                     f"{s['state_resets']}.")
    lines += ["", "## Artifact sizes and drift", "", "| file | bytes | drift RMSE/std(y) | max/std(y) | MAE change |",
              "|---|---|---|---|---|"]
    for f, b in res["sizes"].items():
        d = res["drift"].get(f)
        extra = (f"{100 * d['rmse_over_std']:.2f}% | {100 * d['max_abs_over_std']:.2f}% | {100 * d['mae_change']:+.2f}%"
                 if d else " | | ")
        lines.append(f"| {f} | {b:,} | {extra} |")
    lines += _serve_rows(res.get("serve_load")) + _parity_rows(res.get("platform_parity"))
    lines += ["", "![latency and throughput](latency.png)", ""]
    plot(res, os.path.join(out, "latency.png"))
    with open(os.path.join(out, "REPORT.md"), "w") as fh:
        fh.write("\n".join(lines))


def _serve_rows(sl) -> list[str]:
    """`runtime serve` under load: mosquitto, the service and one publisher process on this machine."""
    if not sl:
        return []
    c = sl["ceiling"]
    rows = ["", "## The service under load (`python -m bench.serve_load`; broker, service and publisher on this machine)", "",
            f"MQTT client ceiling: a paho subscriber that does nothing (QoS 1), fed {c['nodes']} nodes at "
            f"{c['rate_hz']:g} Hz ({c['sent'] / c['seconds']:,.0f} messages/s sent) for {c['seconds']:.0f} s, received "
            f"{c['received_per_s']:,} messages/s and lost {c['lost']:,}.", "",
            "| load | readings/s | lost | missing periods | forecasts | period end → forecast p50 / p99 ms "
            "| tick → published p50 / p99 ms | service CPU (one core) | peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for key in ("nodes_1hz", "nodes_10hz", "overload_stock_broker"):
        if key not in sl:
            continue
        r = sl[key]
        t = r["service_lag_ms"]["tick_to_published"]
        load = (f"{r['nodes']} nodes at {r['rate_hz']:g} Hz" if r["rate_hz"] else
                f"overload: {r['nodes']} nodes as fast as one publisher can, stock mosquitto limits")
        rows.append(f"| {load}, {r['seconds']:g} s | {r['readings_per_s']:,} | "
                    f"{r['lost']} | {r.get('missing_periods', '')} | {r['forecasts']:,} | {r['period_end_to_forecast_ms']['p50']:.0f} / "
                    f"{r['period_end_to_forecast_ms']['p99']:.0f} | {t.get('p50', 0):.1f} / {t.get('p99', 0):.1f} | "
                    f"{r['cpu_percent_of_one_core']:.0f}% | {r['peak_rss_mb']:.0f} MB |")
    return rows


def _parity_rows(pp) -> list[str]:
    """aarch64 under QEMU against this machine (bench/platform_parity.py): parity, drift, emulated µs."""
    if not pp:
        return []
    rows = ["", "## aarch64 under emulation (`python -m bench.platform_parity`; QEMU 10 user mode, real aarch64 wheels)", "",
            "Max |aarch64 − x86_64| of the forecasts over the last 3,000 real readings, normalized output units, against "
            "the verify tier; drift of each quantized artifact against the numpy float reference on aarch64. The µs are "
            "emulated: only the ratios between engines mean anything, never Raspberry Pi speed.", "",
            "| Python | CPU model | artifact | max diff (tier) | drift RMSE/std(y) on aarch64 | emulated µs/step | x86 µs/step |",
            "|---|---|---|---|---|---|---|"]
    for res in pp:
        ver = os.path.basename(res["python"]).replace("python", "")
        for f, r in res["artifacts"].items():
            d = r.get("drift_vs_float")
            drift = f"{100 * d['rmse_over_std']:.2f}%" if d else ""
            verdict = "ok" if r["ok"] else "FAIL"
            rows.append(f"| {ver} | {res['cpu']} | {f} | {r['max_abs_diff_norm']:.1e} ({r['tier']:g}) {verdict} | {drift} | "
                        f"{r['us_per_step_emulated']:.0f} | {r['us_per_step_here']:.0f} |")
    return rows
