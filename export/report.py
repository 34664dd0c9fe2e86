"""REPORT.md for a bundle: the model, its metrics, artifacts, training plots and gate behaviour."""
from __future__ import annotations

import os
import shutil

import numpy as np

from runtime.engines import NumpyEngine

GATE_STEPS = 600


def gate_trace(weights: dict, md: dict, x: np.ndarray):
    """Stream x [T, I] through the numpy reference engine; r and z [T, L, H]."""
    eng = NumpyEngine(weights, md["num_layers"], md.get("residual_input"))
    h = np.zeros((md["num_layers"], 1, md["hidden_size"]), np.float32)
    rs, zs = [], []
    for t in range(len(x)):
        g = {}
        _, h_next = eng.run(x[t:t + 1], h, gates=g)
        h = h_next
        rs.append(g["r"][:, 0]), zs.append(g["z"][:, 0])
    return np.stack(rs), np.stack(zs)


def plot_gates(r, z, signal, name, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers = r.shape[1]
    fig, ax = plt.subplots(2, layers + 1, figsize=(4.2 * (layers + 1), 6), squeeze=False)
    for layer in range(layers):
        ax[0, layer].hist(z[:, layer].ravel(), bins=40, alpha=0.7, label="z (update)")
        ax[0, layer].hist(r[:, layer].ravel(), bins=40, alpha=0.7, label="r (reset)")
        ax[0, layer].set_title(f"layer {layer}: gate activations"), ax[0, layer].legend(fontsize=8)
    ax[0, layers].axis("off")
    top = ax[1, 0]
    top.plot(signal, color="black", lw=1)
    top.set_title(f"{name} (input signal)")
    g = fig.add_subplot(2, 1, 2)
    top.remove()
    for a in ax[1, 1:]:
        a.remove()
    g.plot(signal / max(np.ptp(signal), 1e-9) - signal.min() / max(np.ptp(signal), 1e-9), color="black",
           lw=1, label=f"{name} (scaled to [0, 1])")
    for layer in range(layers):
        g.plot(z[:, layer].mean(1), lw=1, label=f"mean z, layer {layer}")
    g.set_xlabel("step"), g.legend(fontsize=8), g.set_title("update gate over time beside the signal")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(folder: str, manifest: dict, ck: dict, checkpoint: str, x: np.ndarray, raw: np.ndarray) -> None:
    """Write REPORT.md (and its PNGs) into the bundle folder."""
    md = manifest["model"]
    with np.load(os.path.join(folder, "weights.npz")) as w:
        r, z = gate_trace({k: w[k] for k in w.files}, md, x[:GATE_STEPS])
    target = manifest["targets"][0]["name"]
    feats = [f["name"] for f in manifest["features"]]
    signal = raw[:GATE_STEPS, feats.index(target)] if target in feats else raw[:GATE_STEPS, 0]
    plot_gates(r, z, signal, target, os.path.join(folder, "gates.png"))
    stem = os.path.splitext(checkpoint)[0]
    plots = []
    for kind in ("curves", "forecast"):
        if os.path.exists(f"{stem}.{kind}.png"):
            shutil.copy(f"{stem}.{kind}.png", os.path.join(folder, f"{kind}.png"))
            plots.append(kind)
    m = manifest["metrics"]
    lines = [f"# Bundle report: {os.path.basename(checkpoint)}", "",
             f"GRU forecaster, {md['num_layers']} layer(s) x {md['hidden_size']} hidden, "
             f"{m['parameters']} parameters. Inputs ({md['input_size']}): {', '.join(feats)}. "
             f"Forecast: {target} [{manifest['targets'][0]['unit']}], {md['horizon']} steps ahead "
             f"(sample period {manifest['sample_period_s']} s). Data: {manifest['source']['data']}.", "",
             "## Test metrics (raw units; MASE vs in-sample persistence)", "",
             "| model | MAE | RMSE | sMAPE % | MASE |", "|---|---|---|---|---|"]
    for name, v in sorted(m["test"].items(), key=lambda kv: kv[1]["mase"]):
        lines.append(f"| {name} | {v['mae']:.4g} | {v['rmse']:.4g} | {v['smape']:.3f} | {v['mase']:.3f} |")
    lines += ["", f"Streamed / windowed MAE: {m['streamed_over_windowed_mae']:.3f}.", "",
              "## Artifacts", "", "| file | engine | precision | batch | bytes | streaming parity (max abs, normalized) |",
              "|---|---|---|---|---|---|"]
    for a in manifest["artifacts"]:
        err = manifest["parity"]["max_abs_err"].get(a["file"])
        lines.append(f"| {a['file']} | {a['engine']} | {a['precision']} | {a['batch'] or 'any'} | {a['bytes']} | "
                     f"{'' if err is None else f'{err:.1e}'} |")
    lines += ["", f"Parity: each artifact stepped {manifest['parity']['steps']} readings in its real engine, "
              f"state fed back, against the PyTorch model over the whole sequence (tier {manifest['parity']['tier']}).", ""]
    if manifest.get("drift"):
        from_quant = manifest["drift"].get("report_md")
        if from_quant:
            lines += [from_quant, ""]
    lines += ["## Gates", "",
              f"Update (z) and reset (r) gate activations from the numpy reference engine over the first "
              f"{len(z)} readings of the stored test stream. Mean z per layer: "
              + ", ".join(f"{z[:, i].mean():.2f}" for i in range(z.shape[1]))
              + "; share of z > 0.9 (units mostly keeping their state): "
              + ", ".join(f"{(z[:, i] > 0.9).mean():.0%}" for i in range(z.shape[1])) + ".", "",
              "![gates](gates.png)", ""]
    for kind in plots:
        lines += [f"![{kind}]({kind}.png)", ""]
    with open(os.path.join(folder, "REPORT.md"), "w") as f:
        f.write("\n".join(lines))
