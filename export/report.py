"""REPORT.md for a bundle, rendered from its manifest alone (plus the PNGs in the folder).

The bundle writer calls `write_report` in its close, after export and after every quantize, so
the report always describes exactly the manifest beside it: no section is spliced in as text.
"""
from __future__ import annotations

import os

import numpy as np

from runtime.bundle import load_weights
from runtime.engines import NumpyEngine, run_stream
from runtime.derived import full_inputs, golden_stream
from runtime.readings import md_text
from runtime.scaler import Scaler

def plot_text(text) -> str:
    """`text` for a matplotlib label: a `$` escaped, so a name never starts math mode (a parse error)."""
    return str(text).replace("$", r"\$")


def gate_trace(weights: dict, md: dict, x: np.ndarray):
    """Stream x [T, I] (normalized) through the numpy reference engine; r and z [T, L, H].

    The stream is stepped by run_stream, which returns the state each reading met; the gates of
    every step then come from one batched cell evaluation (each (x_t, h_t) pair is one batch row).
    """
    eng = NumpyEngine(weights, md["num_layers"], md.get("residual_input"))
    _, met = run_stream(eng, x, states=True)                          # [T, L, 1, H]
    g = {}
    eng.cell_step(x, met[:, :, 0].transpose(1, 0, 2), gates=g)      # h [L, T, H]: the T steps as a batch
    return g["r"].transpose(1, 0, 2), g["z"].transpose(1, 0, 2)      # [T, L, H] each


def plot_gates(r, z, signal, name, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers = r.shape[1]
    fig, ax = plt.subplots(2, 1, figsize=(4.2 * (layers + 1), 6))
    for layer in range(layers):
        ax[0].hist(z[:, layer].ravel(), bins=40, alpha=0.6, label=f"z (update), layer {layer}")
        ax[0].hist(r[:, layer].ravel(), bins=40, alpha=0.6, label=f"r (reset), layer {layer}")
    ax[0].set_title("gate activations"), ax[0].legend(fontsize=8)
    span = max(float(np.ptp(signal)), 1e-9)
    ax[1].plot((signal - signal.min()) / span, color="black", lw=1, label=f"{plot_text(name)} (scaled to [0, 1])")
    for layer in range(layers):
        ax[1].plot(z[:, layer].mean(1), lw=1, label=f"mean z, layer {layer}")
    ax[1].set_xlabel("step"), ax[1].legend(fontsize=8), ax[1].set_title("update gate over time beside the signal")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _model_section(m: dict) -> list[str]:
    md, tgt = m["model"], m["targets"][0]
    feats = [md_text(f["name"]) for f in m["features"]]
    met = m.get("metrics", {})
    lines = [f"# Bundle report: {md_text(m['source'].get('checkpoint', ''))} (bundle {m['bundle_id'] or 'id on close'})", "",
             f"GRU forecaster, {md['num_layers']} layer(s) x {md['hidden_size']} hidden, "
             f"{met.get('parameters', '?')} parameters. Inputs ({md['input_size']}): {', '.join(feats)}. "
             f"Forecast: {md_text(tgt['name'])} [{md_text(tgt.get('unit', ''))}], {md['horizon']} steps ahead "
             f"(sample period {m['sample_period_s']} s). Data: {md_text(m['source'].get('data', ''))}.", ""]
    if met.get("test"):
        lines += ["## Test metrics (raw units; MASE vs in-sample persistence)", "",
                  "| model | MAE | RMSE | sMAPE % | MASE |", "|---|---|---|---|---|"]
        for name, v in sorted(met["test"].items(), key=lambda kv: kv[1]["mase"]):
            lines.append(f"| {md_text(name)} | {v['mae']:.4g} | {v['rmse']:.4g} | {v['smape']:.3f} | {v['mase']:.3f} |")
        lines += ["", f"Streamed / windowed MAE: {met['streamed_over_windowed_mae']:.3f}.", ""] + _step_lines(met["test"])
    return lines


def _step_lines(models: dict) -> list[str]:
    """MAE per horizon step for every model; the best at each step in bold (bundles exported before
    the per-step MAE was kept have none)."""
    if not all("mae_per_step" in v for v in models.values()):
        return []
    k = len(next(iter(models.values()))["mae_per_step"])
    best = np.min([v["mae_per_step"] for v in models.values()], axis=0)
    lines = ["MAE per horizon step (test split):", "", "| model | " + " | ".join(f"+{i + 1}" for i in range(k)) + " |",
             "|---|" + "---|" * k]
    for name, v in sorted(models.items(), key=lambda kv: kv[1]["mase"]):
        cells = [f"**{x:.4g}**" if x <= b else f"{x:.4g}" for x, b in zip(v["mae_per_step"], best)]
        lines.append(f"| {md_text(name)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _artifact_section(m: dict) -> list[str]:
    lines = ["## Artifacts", "", "| file | engine | precision | batch | bytes | streaming parity (max abs, normalized) "
             "| Forecaster.step p50 / p99 µs |", "|---|---|---|---|---|---|---|"]
    parity, lat = m.get("parity", {}).get("max_abs_err", {}), m.get("latency_us", {})
    for a in m["artifacts"]:
        err, t = parity.get(a["file"]), lat.get(a["file"])
        err_text = "" if err is None else f"{err:.1e}"
        lat_text = "" if t is None else f"{t['p50']:.1f} / {t['p99']:.1f}"
        lines.append(f"| {a['file']} | {a['engine']} | {a['precision']} | {a['batch'] or 'any'} | {a.get('bytes', '')} | "
                     f"{err_text} | {lat_text} |")
    if parity:
        lines += ["", f"Parity: each float artifact stepped {m['parity']['steps']} readings in its real engine, "
                  f"state fed back, against the PyTorch model over the whole sequence (tier {m['parity']['tier']}).", ""]
    return lines


def drift_section(drift: dict, every_candidate: bool = True) -> list[str]:
    """The quantization drift table, from the manifest's `drift` section; with every candidate the
    search tried and its per-op ranking (REPORT.md), or only how many (the quantize command)."""
    lines = ["## Quantization drift", "",
             "Through the runtime engines over the test split (continuous stream, state carried from up to 1,000 "
             "readings before it; and with the state reset every 144 steps). RMSE and max are in % of std(y).", "",
             "| artifact | RMSE vs float | max vs float | cosine | RMSE reset/window | MAE float → quant | size vs float | budget |",
             "|---|---|---|---|---|---|---|---|"]
    for name, d in drift["artifacts"].items():
        c, r, t = d["continuous"]["vs_float"], d["reset_per_window"]["vs_float"], d["task"]
        verdict = "within" if not d["over_budget"] else ("OVER: " + "; ".join(d["over_budget"]))
        lines.append(f"| {name} | {100 * c['rmse_over_std']:.2f}% | {100 * c['max_abs_over_std']:.2f}% | "
                     f"{c['cosine']:.5f} | {100 * r['rmse_over_std']:.2f}% | {t['float']['mae']:.4g} → "
                     f"{t['quantized']['mae']:.4g} ({100 * t['mae_change']:+.2f}%) | {100 * d['size_ratio']:.0f}% | {verdict} |")
    for name, d in drift["artifacts"].items():
        named = all(op in d.get("chosen", "") for op in d.get("precise_ops", []))
        lines.append(f"- {name}: {d.get('chosen', '')}" + ("" if named else f" (kept precise: {', '.join(d['precise_ops'])})"))
        lines += _per_series_line(name, d)
    for note in drift.get("left_out", []):
        lines.append(f"- left out: {note}")
    if drift.get("weight_floor"):
        f = drift["weight_floor"]
        lines.append(f"- the floor: int8 weights alone (float activations) drift {100 * f['rmse_over_std']:.2f}% "
                     f"(max {100 * f['max_abs_over_std']:.2f}%) on validation; no recipe with int8 weights, int16 "
                     "activations included, goes below it")
    if not every_candidate:
        n = sum(len(v) for v in drift.get("candidates", {}).values())
        return lines + ["", f"{n} candidates measured on the validation split; every one, and the per-op ranking, "
                            "in the bundle's REPORT.md.", ""]
    return (lines + _candidate_lines(drift) + _mixed_lines(drift) + _grid_lines(drift)
            + ["", "![drift](drift.png)", ""])


def _per_series_line(name: str, d: dict) -> list[str]:
    """Many series: the range of the series' own MAE changes (each in its own scale, base, deadband)."""
    per = d["task"].get("per_series")
    if not per:
        return []
    lo, hi = (min(per, key=lambda s: per[s]["mae_change"]), max(per, key=lambda s: per[s]["mae_change"]))
    return [f"  - {name}, each of {len(per)} series in its own scale (MAE float → quant is in the pooled target's units): "
            f"MAE change from {100 * per[lo]['mae_change']:+.2f}% ({lo}) to {100 * per[hi]['mae_change']:+.2f}% ({hi})"]


def _why_chosen(target) -> list[str]:
    if not target:
        return []
    return [f"Why the chosen one: among the candidates within the target (RMSE ≤ {100 * target['rmse_over_std']:g}% and "
            f"max ≤ {100 * target['max_abs_over_std']:g}% of std(y) on validation), the one with the fewest ops at "
            "higher precision, then the least drift; when none is within, the least drift (the budgets then decide "
            "whether it is added).", ""]


def _mixed_lines(drift: dict) -> list[str]:
    """The per-op sensitivity ranking of the mixed-precision search, and what it kept precise."""
    lines = []
    for file, r in drift.get("mixed_precision", {}).items():
        lines += ["", f"### Mixed precision for {file} (validation split)", ""]
        if not r.get("reached"):
            lines.append(f"Every op at {r['how']} still misses the target: mixed precision cannot reach it from {r['base']}.")
            continue
        lines += [f"From {r['base']}, every op at {r['how']}; each reverted alone to int8 adds this drift (most "
                  f"sensitive first). Kept at {r['how']}: {', '.join(r['kept']) or 'none'}.", "",
                  "| op | val RMSE with it reverted | val max | kept |", "|---|---|---|---|"]
        for o in r["ops"]:
            lines.append(f"| {o['op']} | {100 * o['val_rmse_over_std_reverted']:.2f}% | "
                         f"{100 * o['val_max_abs_over_std_reverted']:.2f}% | {'yes' if o['op'] in r['kept'] else ''} |")
    return lines


def _candidate_lines(drift: dict) -> list[str]:
    """Every candidate quantize built, measured on the validation split; the chosen one marked."""
    if not drift.get("candidates"):
        return []
    lines = ["", f"### Candidates (chosen on the {drift.get('chosen_on', 'validation split')}; the table above is "
             f"on the {drift.get('reported_on', 'test split')})", "",
             *_why_chosen(drift.get("target")),
             "| artifact | candidate | precise ops | val RMSE vs float | val max | bytes | native call µs | |",
             "|---|---|---|---|---|---|---|---|"]
    for file, rows in drift["candidates"].items():
        for r in rows:
            lines.append(f"| {file} | {r['candidate']} | {len(r.get('precise_ops', []))} | {100 * r['val_rmse_over_std']:.2f}% | "
                         f"{100 * r['val_max_abs_over_std']:.2f}% | {r['bytes']} | {r['invoke_us']:.1f} | "
                         f"{'**chosen**' if r['chosen'] else ''} |")
    return lines


def _grid_lines(drift: dict) -> list[str]:
    """Each feature's int8 input grid step in its own units: which sensor the int8 input is coarse for."""
    grid = drift.get("input_grid")
    if not grid or "chosen" not in grid:
        return []
    lines = ["", "### TFLite int8 artifact: input grid per feature (one step of its x grid, int8 or int16, in the "
             "feature's own units)", "",
             "| feature | unit | inputs as trained | chosen |", "|---|---|---|---|"]
    for a, b in zip(grid["as trained"], grid["chosen"]):
        lines.append(f"| {md_text(a['feature'])} | {md_text(a['unit'])} | {a['grid_step']:.4g} | {b['grid_step']:.4g} |")
    return lines


def _gate_section(folder: str, m: dict) -> list[str]:
    md = m["model"]
    weights = load_weights(os.path.join(folder, "weights.npz"), md)
    raw, times = golden_stream(os.path.join(folder, m["golden"]["file"]))
    r, z = gate_trace(weights, md, Scaler.from_manifest(m).normalize(full_inputs(m, raw, times)))
    feats = [f["name"] for f in m["features"]]
    target = m["targets"][0]["name"]
    signal = raw[:, feats.index(target)] if target in feats else raw[:, 0]
    plot_gates(r, z, signal, target, os.path.join(folder, "gates.png"))
    return ["## Gates", "",
            f"Update (z) and reset (r) gate activations from the numpy reference engine over the "
            f"{len(z)} golden readings. Mean z per layer: " + ", ".join(f"{z[:, i].mean():.2f}" for i in range(z.shape[1]))
            + "; share of z > 0.9 (units mostly keeping their state): "
            + ", ".join(f"{(z[:, i] > 0.9).mean():.0%}" for i in range(z.shape[1])) + ".", "", "![gates](gates.png)", ""]


def _interval_section(folder: str, m: dict) -> list[str]:
    """Interval widths and offline test coverage per horizon step, and a plot of the t+1 band."""
    iv, k = m["intervals"], m["model"]["horizon"]
    unit = md_text(m["targets"][0].get("unit", ""))
    lines = ["## Forecast intervals", "", f"{iv['method']}; {iv['calibration_points']} validation origins, "
             f"coverage on {iv['test_points']} test origins (float model, fixed intervals; "
             "`python -m bench.coverage` measures it through the runtime, fixed and adaptive).", "",
             "| level | | " + " | ".join(f"+{i + 1}" for i in range(k)) + " |", "|---|---|" + "---|" * k]
    for lv in iv["levels"]:
        key = str(lv)
        lines.append(f"| {float(lv):.0%} | width [{unit}] | " + " | ".join(f"{v:.4g}" for v in iv["width"][key]) + " |")
        lines.append("| | test coverage | " + " | ".join(f"{100 * v:.1f}%" for v in iv["test_coverage_offline"][key]) + " |")
    _plot_intervals(folder, m, os.path.join(folder, "intervals.png"))
    return lines + ["", "![intervals](intervals.png)", ""]


def _plot_intervals(folder: str, m: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from runtime.engines import open_engine
    from runtime.forecaster import Forecaster, step_rows
    art = next(a for a in m["artifacts"] if a["engine"] == "numpy")
    fc = Forecaster(folder, m, open_engine(os.path.join(folder, art["file"]), art, m["model"]), art, intervals=True)
    raw, times = golden_stream(os.path.join(folder, m["golden"]["file"]))
    forecasts, bounds = step_rows(fc, raw, times, bounds=True)          # [T, K]; {level: ([T, K], [T, K])}
    j = fc.target_index
    fig, ax = plt.subplots(figsize=(10, 3.6))
    t = np.arange(1, len(raw))
    for lv in sorted(bounds, reverse=True):
        lo, hi = bounds[lv]
        ax.fill_between(t, lo[:-1, 0], hi[:-1, 0], alpha=0.25, label=f"{float(lv):.0%} interval")
    ax.plot(t, forecasts[:-1, 0], lw=1, label="forecast t+1")
    if j is not None:
        ax.plot(t, raw[1:, j], color="black", lw=1, label="actual")
    ax.set_title(f"{plot_text(m['targets'][0]['name'])}: t+1 forecast and intervals over the golden readings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def mcu_section(mcu: dict) -> list[str]:
    """The C library's size and cost per variant and CPU (python -m export.mcu --report, or
    python -m export.mcu_target BUNDLE --table)."""
    whole = any("program_flash_bytes" in v for cpus in mcu["variants"].values() for v in cpus.values()
                if isinstance(v, dict))
    lines = ["## Microcontrollers: the generated C library (`python -m export.mcu`)", "",
             f"Library flash = text + rodata + data of gru_step.o; library RAM = the state ({mcu['state_bytes']} B, the "
             f"caller's) + the stack bound from -fstack-usage. "
             + ("Program = the linked image (startup, a main calling gru_forecast once, the library, no libm; "
                "--gc-sections): flash = text + data, RAM = data + bss + the summed stack frames. " if whole else "")
             + f"Instructions counted by {mcu['instructions_counted_by']}: instructions, not cycles. The cycle "
             f"column is an estimate at {mcu['cpi_estimate']} cycles per instruction.", "",
             "| variant | CPU | library flash | library RAM (state + stack) |" + (" program flash | program RAM |" if whole else "")
             + " instructions / step | cycles / step (estimate) |",
             "|---|---|---|---|" + ("---|---|" if whole else "") + "---|---|"]
    for precision, cpus in mcu["variants"].items():
        for cpu, v in cpus.items():
            if not isinstance(v, dict):
                continue
            prog = (f" {v.get('program_flash_bytes', 0):,} B | {v.get('program_ram_bytes', 0):,} B |" if whole else "")
            lines.append(f"| {precision} | {cpu} | {v['flash_bytes']:,} B | {mcu['state_bytes'] + v['stack_bytes_bound']:,} B |"
                         f"{prog} {v['instructions_per_step']:,.0f} | ~{v['instructions_per_step'] * mcu['cpi_estimate']:,.0f} |")
    drift = mcu["variants"].get("int8", {}).get("drift_rmse_over_std")
    if drift is not None:
        lines += ["", f"int8 (weights with a per-row scale, float activations) vs float over 2,000 steps: RMSE/std(y) "
                  f"{100 * drift:.2f}%."]
    return lines + ["", f"Anchor: {mcu['tflm_anchor']}.", ""]


def tflm_npu_sections(m: dict) -> list[str]:
    """The manifest's `tflm` (python -m quantize) and `npu` (python -m export.npu) sections as tables."""
    lines = []
    if m.get("tflm"):
        from .tflm import table
        lines += ["## TensorFlow Lite Micro: each TFLite artifact in the TFLM interpreter", "",
                  "Closed loop over real test readings against LiteRT; the arena is the smallest TFLM accepts "
                  "(found by bisection on this 64-bit host: an upper bound on a 32-bit MCU).", "",
                  table(m["tflm"]), ""]
    if m.get("npu"):
        from .npu import table
        lines += ["## Arm Ethos-U NPUs: the quantized artifacts compiled by Vela", "",
                  "Vela's performance estimate: ops placed on the NPU or left to the CPU, cycles and time per step, "
                  "SRAM (feature maps) and flash (weights and command stream).", "", table(m["npu"]), ""]
    return lines


TRAINING_PLOTS = ("curves", "forecast", "steps")     # <checkpoint stem>.<kind>.png, copied in by export


def write_report(folder: str, m: dict) -> None:
    """Write REPORT.md (and gates.png) into the bundle folder from its manifest."""
    lines = _model_section(m) + _artifact_section(m)
    if m.get("intervals"):
        lines += _interval_section(folder, m)
    if m.get("drift", {}).get("artifacts"):
        lines += drift_section(m["drift"])
    if m.get("mcu"):
        lines += mcu_section(m["mcu"])
    lines += tflm_npu_sections(m)
    lines += _gate_section(folder, m)
    for kind in TRAINING_PLOTS:
        if os.path.exists(os.path.join(folder, f"{kind}.png")):
            lines += [f"![{kind}]({kind}.png)", ""]
    with open(os.path.join(folder, "REPORT.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
