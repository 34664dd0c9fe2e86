"""`gru-edge SUBCOMMAND ...`: one command for every tool, dispatched to the module that does the work.

On every install (gru-edge-runtime): stream, serve, verify, info, bench, score (`python -m runtime`).
With the workstation package (gru-edge): train, export, quantize, mcu, npu, flash, fleet, collect.
Each subcommand's flags and defaults are its module's own: `gru-edge SUBCOMMAND --help`.
The `python -m runtime|train|export|...` forms do the same.
"""
from __future__ import annotations

import importlib
import sys
from importlib import metadata

from .args import invoked_as

DEVICE = {
    "stream": "stream readings from a CSV (or stdin) through a bundle, one forecast row per reading stepped",
    "serve": "the long-running service: many sensors over MQTT, serial or stdin, with state and capture",
    "verify": "check a bundle's artifacts against its golden outputs with the engines installed here",
    "info": "what a bundle holds: model, features, artifacts, accuracy, intervals",
    "bench": "step latency, throughput and memory of a bundle on this machine",
    "score": "live MAE per step against persistence, from what `serve --capture` kept",
}
# name: (module whose main(argv) runs it, argv prefix, one-line help, the extra it needs)
WORKSTATION = {
    "train": ("train.__main__", [], "train a GRU forecaster from a CSV or a bundled dataset", "train"),
    "export": ("export.__main__", [], "a checkpoint to a bundle: ONNX + TFLite artifacts, manifest, goldens", "export"),
    "quantize": ("quantize.__main__", [], "add int8 artifacts to a bundle, with their measured drift", "export"),
    "mcu": ("export.mcu.__main__", [], "a bundle's step as dependency-free C99 for a microcontroller", "export"),
    "npu": ("export.npu", [], "Vela placement and cost of a bundle's int8 graphs per Ethos-U NPU", "mcu"),
    "flash": ("flash.__main__", [], "deploy a bundle to a device safely (deploy, rollback, status, wheel)", ""),
    "fleet": ("flash.__main__", ["fleet"], "staged rollouts to many devices over Ansible", "fleet"),
    "collect": ("flash.__main__", ["collect"], "pull what devices captured into a Parquet dataset", "train"),
}


def version() -> str:
    """`gru-edge X (workstation Y | device only)`: the installed distributions' versions."""
    try:
        v = metadata.version("gru-edge-runtime")
    except metadata.PackageNotFoundError:
        v = "unknown (not installed)"
    try:
        ws = f"workstation gru-edge {metadata.version('gru-edge')}"
    except metadata.PackageNotFoundError:
        ws = "device only: the workstation package gru-edge is not installed"
    return f"gru-edge-runtime {v} ({ws})"


def has_workstation() -> bool:
    """Whether the workstation distribution is installed (not merely a module called `train` on the path)."""
    try:
        metadata.distribution("gru-edge")
        return True
    except metadata.PackageNotFoundError:
        return False


def usage() -> str:
    ws = has_workstation()
    lines = ["usage: gru-edge [--version] SUBCOMMAND [--help] ...", "", "on every install:"]
    lines += [f"  {k:<10}{v}" for k, v in DEVICE.items()]
    lines += ["", "with the workstation package (pip install gru-edge)" + ("" if ws else ": NOT INSTALLED here") + ":"]
    lines += [f"  {k:<10}{v[2]}" for k, v in WORKSTATION.items()]
    lines += ["", "gru-edge SUBCOMMAND --help lists its flags and defaults."]
    return "\n".join(lines)


def missing(sub: str, extra: str, err: ImportError | None) -> str:
    """The one line a workstation subcommand prints when what it needs is not installed."""
    pkg = f"gru-edge[{extra}]" if extra else "gru-edge"
    if err is None:
        return (f"error: `gru-edge {sub}` is a workstation tool and this is a device install (gru-edge-runtime only): "
                f"on a workstation, pip install '{pkg}'")
    return f"error: `gru-edge {sub}` needs {err.name or 'a module'} which is not installed: pip install '{pkg}'"


def workstation(sub: str, rest: list[str]) -> int:
    module, prefix, _, extra = WORKSTATION[sub]
    if not has_workstation():
        print(missing(sub, extra, None), file=sys.stderr)
        return 2
    try:
        entry = importlib.import_module(module).main
    except ImportError as e:
        print(missing(sub, extra, e), file=sys.stderr)
        return 2
    invoked_as("gru-edge" if prefix else f"gru-edge {sub}")      # (a prefix is the parser's own subcommand)
    return entry(prefix + rest)


def main(argv: list[str] | None = None) -> int:
    """The `gru-edge` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version())
        return 0
    sub, rest = argv[0], argv[1:]
    if sub in DEVICE:
        from .__main__ import main as runtime_main
        invoked_as("gru-edge")
        return runtime_main([sub, *rest])
    if sub in WORKSTATION:
        return workstation(sub, rest)
    print(f"error: unknown subcommand {sub!r}; expected one of: {', '.join([*DEVICE, *WORKSTATION])} "
          "(gru-edge --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
