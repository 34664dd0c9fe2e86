"""TensorFlow Lite Micro parity and arena: each TFLite artifact of a bundle in the real TFLM interpreter.

    >>> from export.tflm import tflm_section
    >>> tflm_section("bundles/demo")          # doctest: +SKIP
    {'step.tflite': {'arena_bytes': 6416, 'max_abs_err': 4.8e-07, 'steps': 1000}, ...}

Every batch-1 TFLite artifact (step.tflite, step.int8.tflite, step.int16.tflite) is stepped over
real readings (the test split of `<bundle>.build.npz`), closed loop (each engine feeds its own
h_next back), in TFLM (`tflite-micro`, the real TFLM runtime in a Python wrapper) and in LiteRT
through the runtime's own engine; max_abs_err is in normalized output units, to be held to the
artifact's tier (runtime.bundle.TIERS).

arena_bytes is the smallest tensor arena the interpreter accepts, found by bisection. The
interpreter's own allocation report (RecordingMicroAllocator) is smaller: it leaves out the
scratch memory the memory planner borrows from the arena while it allocates (measured on the
hidden-8 test model: report 4,176 B, needed 5,792 B). The figure is for this 64-bit host; on a
32-bit MCU pointers halve, so it is an upper bound there. TFLM is a workstation tool here
(the `mcu` extra), never a device dependency.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile

import numpy as np

from runtime.bundle import TIERS, bundle_file, check_artifact, read_manifest
from runtime.engines import open_engine, run_stream

from .buildfile import BuildData, reach_back, read_build_file

MIN_STEPS = 500            # the floor: at least this many closed-loop real readings
ARENA_LIMIT = 1 << 24      # 16 MiB: a step graph that needs more is no microcontroller model
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'|"
                         r"Failed to get registration from op code ([A-Z0-9_]+)")


class TFLMError(RuntimeError):
    """An artifact TFLite Micro cannot run; the message names the file and the op (or the cause)."""


@contextlib.contextmanager
def captured_output(sink: list):
    """Redirect this process's stdout and stderr (file descriptors, so C printf too) into `sink[0]`.

    TFLM reports allocation failures and missing kernels by printing, not in its exceptions.
    """
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 1), os.dup2(tmp.fileno(), 2)
            yield sink
        finally:
            ctypes.CDLL(None).fflush(None)          # C stdio buffers
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def _tflm():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise TFLMError("TFLite Micro parity needs the 'tflite-micro' package (workstation only: "
                        "pip install -e '.[mcu]')") from None
    return runtime


def _rank(details: dict) -> int:
    return len(details["shape"])          # x [B, I] before h [L, B, H]; y [B, O] before h_next


class TFLMEngine:
    """A .tflite step in TFLM with the runtime engines' buffers: x, h → invoke() → y, h_next.

    Quantized I/O is (de)quantized around the call the way runtime.engines.LiteRTEngine does it
    (round half to even, clip to the integer range), so both see the same integers.
    """
    name = "tflm"

    def __init__(self, model: bytes, arena_bytes: int, residual_input=None, input_gain=None):
        tflm = _tflm()
        self.interp = tflm.Interpreter.from_bytes(model, arena_size=int(arena_bytes))
        graph = tflm.convert_bytearray_to_object(bytearray(model)).subgraphs[0]
        n_in, n_out = len(graph.inputs), len(graph.outputs)
        ins = sorted((self.interp.get_input_details(i) | {"i": i} for i in range(n_in)), key=_rank)
        outs = sorted((self.interp.get_output_details(i) | {"i": i} for i in range(n_out)), key=_rank)
        self._in, self._out = ins, outs                       # x [B, I], h [L, B, H]; y [B, O], h_next
        self.x, self.h, self.y, self.h_next = (np.zeros(tuple(d["shape"]), np.float32) for d in ins + outs)
        self.residual_input, self.input_gain = residual_input, input_gain

    def invoke(self):
        for d, arr in zip(self._in, (self.x, self.h)):
            q = d["quantization_parameters"]
            if d["dtype"] != np.float32:
                info = np.iinfo(d["dtype"])
                arr = np.clip(np.rint(arr / q["scales"][0]) + q["zero_points"][0], info.min, info.max)
            self.interp.set_input(np.ascontiguousarray(arr, d["dtype"]), d["i"])
        self.interp.invoke()
        for d, buf in zip(self._out, (self.y, self.h_next)):
            q, v = d["quantization_parameters"], self.interp.get_output(d["i"])
            if d["dtype"] == np.float32:
                np.copyto(buf, v)
            else:
                np.multiply(np.subtract(v, q["zero_points"][0], dtype=np.float32), q["scales"][0], out=buf)

    def run(self, x, h):
        """One step, like every runtime engine: normalized x [B, I], h → (forecast [B, O], h_next)."""
        x = np.asarray(x, np.float32).reshape(self.x.shape)
        np.copyto(self.x, x if self.input_gain is None else x * self.input_gain)
        np.copyto(self.h, h)
        self.invoke()
        y = self.y.copy()
        if self.residual_input is not None:
            y += x[:, self.residual_input:self.residual_input + 1]
        return y, self.h_next


def _try_arena(model: bytes, size: int):
    """(True, '') if TFLM allocates and invokes the model in `size` bytes, else (False, what it printed)."""
    out = []
    with captured_output(out):
        try:
            eng = TFLMEngine(model, size)
            eng.invoke()
            ok = True
        except (RuntimeError, ValueError):
            ok = False
    return ok, "" if ok else out[0]


def needed_arena(model: bytes, file: str = "model") -> int:
    """The smallest arena (bytes) TFLM runs `model` in, by bisection; TFLMError names a missing op."""
    hi = 4096
    while True:
        ok, text = _try_arena(model, hi)
        if ok:
            break
        op = _MISSING_OP.search(text)
        if op:
            raise TFLMError(f"{file}: TFLite Micro has no kernel for op {op.group(1) or op.group(2)} "
                            f"({text.strip().splitlines()[0][:200]})")
        if hi >= ARENA_LIMIT:
            last = (text.strip().splitlines() or ["no message"])[-1][:200]
            raise TFLMError(f"{file}: TFLite Micro cannot run it in a {ARENA_LIMIT}-byte arena: {last}")
        hi *= 2
    lo = 0                                       # lo fails (or is 0), hi runs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _try_arena(model, mid)[0] else (mid, hi)
    return hi


def tflite_artifacts(manifest: dict) -> list[dict]:
    """The bundle's batch-1 TFLite artifacts: the ones a microcontroller would run."""
    return [a for a in manifest["artifacts"] if a["engine"] == "litert" and a.get("batch") in (None, 1)]


def parity_readings(data: BuildData, steps: int, where: str = "the build file") -> np.ndarray:
    """Up to `steps` consecutive real readings, normalized [T, I]: the test split's longest range, and
    where it is shorter than `steps` (a small series), the readings before it in its segment too
    (parity tests the graph, it scores nothing)."""
    _, a, b = data.streams("test", longest=True)[0]
    x = data.x[reach_back(data.segments, a, b, steps):b]
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) < MIN_STEPS:
        raise TFLMError(f"{where}: the test split's longest range and its segment have {len(x)} finite readings; "
                        f"TFLM parity needs {MIN_STEPS}")
    return np.ascontiguousarray(x[:steps], np.float32)


def tflm_artifact(folder: str, manifest: dict, art: dict, x: np.ndarray) -> dict:
    """One artifact's {arena_bytes, max_abs_err, steps}: TFLM vs LiteRT, both closed loop over x [T, I]."""
    path = bundle_file(folder, art["file"], f"artifact {art['file']!r}")
    with open(path, "rb") as f:
        model = f.read()
    md = manifest["model"]
    arena = needed_arena(model, art["file"])
    ref = open_engine(path, art, md, 1)
    micro = TFLMEngine(model, arena, md.get("residual_input"), ref.input_gain)
    out = []
    with captured_output(out):
        try:
            got = run_stream(micro, x)
        except RuntimeError as e:
            got = e
    if isinstance(got, Exception):
        raise TFLMError(f"{art['file']}: TFLite Micro failed while stepping: {got} {out[0].strip()[-200:]}")
    err = float(np.max(np.abs(got - run_stream(ref, x))))
    if not np.isfinite(err):
        raise TFLMError(f"{art['file']}: TFLite Micro or LiteRT gave non-finite forecasts over the test readings")
    return {"arena_bytes": int(arena), "max_abs_err": err, "steps": int(len(x))}


def tflm_section(bundle: str, steps: int = 1000) -> dict:
    """The manifest's `tflm` section: {file: {"arena_bytes", "max_abs_err", "steps"}} per TFLite artifact,
    over up to `steps` readings (at least MIN_STEPS).

    Raises:
        TFLMError: an artifact TFLM cannot run (naming each, with the op), too few readings, or no
            tflite-micro package.
    """
    if steps < MIN_STEPS:
        raise ValueError(f"steps is {steps}; TFLM parity needs at least {MIN_STEPS} closed-loop readings")
    m = read_manifest(bundle)
    for art in tflite_artifacts(m):
        check_artifact(bundle, art)
    return measure_section(bundle, m, parity_readings(read_build_file(bundle, m), steps, bundle))


def measure_section(folder: str, manifest: dict, x: np.ndarray) -> dict:
    """`tflm_section` over a folder and its manifest as given (no checksums: for a bundle still being
    written, e.g. quantize's `measure_section(w.tmp, w.manifest, parity_readings(data, 1000))`)."""
    section, failed = recorded_section(folder, manifest, x)
    if failed:
        raise TFLMError("; ".join(failed))
    return section


def recorded_section(folder: str, manifest: dict, x: np.ndarray) -> tuple[dict, list[str]]:
    """(section, failures): like `measure_section`, but an artifact TFLM cannot run is recorded as
    {"error": "..."} (the op it lacks) and named in `failures` instead of raising (what quantize keeps)."""
    _tflm()
    section, failed = {}, []
    for art in tflite_artifacts(manifest):
        try:
            section[art["file"]] = tflm_artifact(folder, manifest, art, x)
        except TFLMError as e:
            section[art["file"]] = {"error": str(e)}
            failed.append(str(e))
    return section, failed


def over_tier(section: dict, manifest: dict) -> list[str]:
    """Artifacts of a `tflm` section whose TFLM-vs-LiteRT error exceeds their precision's tier."""
    prec = {a["file"]: a["precision"] for a in manifest["artifacts"]}
    return [f"{f}: TFLM vs LiteRT max abs error {v['max_abs_err']:.3g} > {prec[f]} tier {TIERS[prec[f]]:g}"
            for f, v in section.items() if "error" not in v and not v["max_abs_err"] <= TIERS[prec[f]]]


def table(section: dict) -> str:
    """The section as a Markdown table, one row per artifact (for REPORT.md and the README)."""
    lines = ["| artifact | TFLM arena (B) | max abs err vs LiteRT (normalized) | closed-loop steps |",
             "|---|---|---|---|"]
    lines += [f"| {f} | {v['arena_bytes']} | {v['max_abs_err']:.2g} | {v['steps']} |" if "error" not in v
              else f"| {f} | does not run: {v['error'].replace('|', '/')} | | |" for f, v in section.items()]
    return "\n".join(lines)
