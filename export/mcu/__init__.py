"""The bundle's step as dependency-free C99 (`python -m export.mcu BUNDLE --out DIR`, see __main__.py).

`write_library` writes gru_step.h, gru_step.c and README.md: the bundle's GRU (any number of layers), its input
scaler, the residual add and the denormalization, behind

    int gru_forecast(const float reading[GRU_INPUTS], float h[GRU_STATE_SIZE], float forecast[GRU_HORIZON]);
    void gru_reset(float h[GRU_STATE_SIZE]);

No libm (sigmoid and tanh through `exp_`, exp by range reduction, a degree-7 polynomial and the
exponent bits: within 2 ulp of expf), no dynamic memory, `static const` weights. The state is external, as in every
engine (zero = a fresh stream). Mirrors runtime/engines.NumpyEngine (PyTorch gate order r, z, n;
the reset gate multiplies W_hn h + b_hn) and runtime/forecaster.Forecaster.step. int8: weights
with one float scale per output row (about a third of the flash), float activations.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from runtime.bundle import check_artifact, head_weights, layer_weights, load_weights, read_manifest, sha256_file
from runtime.derived import series_ids
from runtime.streams import not_a_series

from ..writer import remove_stale_temps, replace_dir_atomically

PRECISIONS = ("fp32", "int8")
# What `write_library` writes into --out; the marker lists each file's sha256, so a later run knows
# the folder as its own output (and a file edited since as not its own). `targets` is --report's.
MARKER = ".gru-edge-mcu"
OWN_FOLDERS = ("targets",)
# A name or unit longer than this is refused: its escaped literal must stay under the 4,095
# characters C99 guarantees a string literal (up to 16 characters per escaped character).
MAX_NAME = 200
_C_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "?": "\\?"}


class McuError(RuntimeError):
    """The library cannot be generated as asked (a name it cannot carry, an --out it must not replace)."""


def c_string(text: str) -> str:
    """`text` as a C99 string literal that reads back byte for byte, and stays text inside a comment.

    Quotes, backslashes and every '?' (no trigraph such as ??/ can form) are escaped; anything
    outside printable ASCII becomes 3-digit octal escapes of its UTF-8 bytes; a '/' next to a '*'
    becomes \\057, so neither */ nor /* appears.
    """
    out = []
    for i, ch in enumerate(text):
        if ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif ch == "/" and "*" in (text[i - 1:i] + text[i + 1:i + 2]):
            out.append("\\057")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8", "surrogatepass"))
    return '"' + "".join(out) + '"'


def c_float(v) -> str:
    """A C float literal that round-trips float32 (9 significant digits; '3.0f', never '3f')."""
    text = f"{float(v):.9g}"
    if not any(c in text for c in ".eEn"):
        text += ".0"
    return text + "f"


def _floats(v) -> str:
    return ", ".join(c_float(x) for x in np.ravel(v))


def _rows(values: np.ndarray, fmt) -> str:
    return "{\n" + ",\n".join("    {" + ", ".join(fmt(v) for v in row) + "}" for row in values) + "\n}"


def _matrix(name: str, w: np.ndarray, precision: str) -> str:
    """A [rows, cols] weight as C: float, or int8 with a per-row scale (name_q, name_s)."""
    rows, cols = w.shape
    if precision == "fp32":
        return f"static const float {name}[{rows}][{cols}] = {_rows(w, c_float)};\n"
    scale = np.maximum(np.abs(w).max(axis=1), 1e-12) / 127.0
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return (f"static const signed char {name}_q[{rows}][{cols}] = {_rows(q, lambda v: str(int(v)))};\n"
            f"static const float {name}_s[{rows}] = {{{_floats(scale)}}};\n")


def _dot(name: str, row: str, vec: str, n: str, precision: str) -> str:
    """C expression: row `row` of weight `name` times the vector `vec` of length `n`."""
    if precision == "fp32":
        return f"dot({name}[{row}], {vec}, {n})"
    return f"{name}_s[{row}] * dot_q({name}_q[{row}], {vec}, {n})"


def _labels(m: dict) -> tuple[list, list]:
    """Every input's name and unit, then the target's, as C string literals; McuError for one that
    is not a string or is too long to be one."""
    derived = (m.get("derived_inputs") or {}).get("inputs", [])
    fields = [(f"features[{i}]", f) for i, f in enumerate(m["features"])]
    fields += [(f"derived_inputs.inputs[{i}]", {"name": d["name"]}) for i, d in enumerate(derived)]
    fields.append(("targets[0]", m["targets"][0]))
    names, units = [], []
    for where, f in fields:
        for key, into in (("name", names), ("unit", units)):
            text = f.get(key, "")
            if not isinstance(text, str) or len(text) > MAX_NAME:
                raise McuError(f"manifest field '{where}.{key}' ({str(text)[:40]!r}...) is not a string of at most "
                               f"{MAX_NAME} characters; the C library writes it as a string literal")
            into.append(c_string(text))
    return names, units


def _initializer(literals: list) -> str:
    return "{ \\\n    " + ", \\\n    ".join(literals) + " }"


def _derived_rule(d: dict, n: int, series=None) -> str:
    """How the caller computes derived input `d` (runtime/derived.py), for the header's table; a
    library for one series (`series`) says which value its identity inputs take."""
    if d["kind"] == "series" and series is not None:
        return f"{int(d['id'] == series)} (this library is for series {c_string(series)})"
    if d["kind"] == "series":
        return (f"1 if this sensor is series {c_string(d['id'])}, else 0 (a sensor of none of the "
                f"{n} series: 1/{n} on each)")
    return (f"{d['fn']}(2*pi * fmod(t, {d['period_s']:g}) / {d['period_s']:g}), t: the reading's wall-clock "
            "seconds since 1970 (computed by the caller)")


def _input_rows(m: dict, names: list, units: list) -> str:
    """The header comment's table of inputs: index, name and unit, or a derived input's rule."""
    n, derived = len(m["features"]), (m.get("derived_inputs") or {}).get("inputs", [])
    k = len(series_ids(m.get("derived_inputs")))
    rows = [f" *   {i:3d}  {names[i]:<28} {units[i]}" for i in range(n)]
    rows += [f" *   {n + i:3d}  {names[n + i]:<28} = {_derived_rule(d, k, m.get('mcu_series'))}"
             for i, d in enumerate(derived)]
    return "\n".join(rows)


def header(m: dict) -> str:
    """gru_step.h: the API, the sizes, and every name and unit as an escaped C string literal (in the
    comment and in GRU_INPUT_NAMES / GRU_INPUT_UNITS), so no name ever becomes code."""
    md = m["model"]
    names, units = _labels(m)
    rows = _input_rows(m, names, units)
    pace = f"every {m['sample_period_s']:g} s" if m.get("sample_period_s") else "at the data's own pace"
    p = len(md["base"]) - 1 if md.get("base") else 0
    state = (f"#define GRU_BASE_LAGS {p}   /* an AR base: the state also keeps the last {p} levels and a started flag */\n"
             "#define GRU_STATE_SIZE (GRU_LAYERS * GRU_HIDDEN + GRU_BASE_LAGS + 1)" if p
             else "#define GRU_STATE_SIZE (GRU_LAYERS * GRU_HIDDEN)")
    one = f" for series {c_string(m['mcu_series'])}" if m.get("mcu_series") is not None else ""
    return f"""/* gru_step.h: generated by `python -m export.mcu` from bundle {m['bundle_id']}{one}.
 * GRU {md['num_layers']} x {md['hidden_size']} forecasting {names[-1]} (unit {units[-1]}) {md['horizon']} steps ahead
 * {pace}. C99, no libm (isfinite from <math.h> only), no dynamic memory.
 *
 *   static float h[GRU_STATE_SIZE];          zero = a fresh stream; keep it across calls
 *   float forecast[GRU_HORIZON];
 *   if (gru_forecast(reading, h, forecast) == 0) ... forecast[k] = the target k + 1 steps ahead
 *
 * reading: GRU_INPUTS raw sensor values in this order (index, name, unit; names as C strings):
{rows}
 */
#ifndef GRU_STEP_H
#define GRU_STEP_H

#define GRU_INPUTS {md['input_size']}
#define GRU_HIDDEN {md['hidden_size']}
#define GRU_LAYERS {md['num_layers']}
#define GRU_HORIZON {md['horizon']}
{state}

/* Labels, e.g. static const char *const names[GRU_INPUTS] = GRU_INPUT_NAMES; (nothing is stored
 * unless used). */
#define GRU_INPUT_NAMES {_initializer(names[:-1])}
#define GRU_INPUT_UNITS {_initializer(units[:-1])}
#define GRU_TARGET_NAME {names[-1]}
#define GRU_TARGET_UNIT {units[-1]}

/* Returns 0, or 1 when a reading is not finite (the state is then left untouched). */
int gru_forecast(const float reading[GRU_INPUTS], float h[GRU_STATE_SIZE], float forecast[GRU_HORIZON]);
void gru_reset(float h[GRU_STATE_SIZE]);

#endif
"""


def _weights(w: dict, md: dict, precision: str) -> str:
    """The weights as C arrays. The C names mirror the one map (runtime.bundle.WEIGHT_NAMES, HEAD_NAMES):
    W_IH{layer} ↔ l{layer}.w_ih, W_HH ↔ w_hh, W_HEAD ↔ head.w, B_HEAD ↔ head.b; the biases as the step uses
    them: B_RZ = b_ih + b_hh of the r and z gates, B_IN and B_HN = the n gate's b_ih and b_hh."""
    out, n = [], md["hidden_size"]
    for layer in range(md["num_layers"]):
        w_ih, w_hh, b_ih, b_hh = layer_weights(w, layer)
        b_rz = np.asarray(b_ih[:2 * n], np.float64) + np.asarray(b_hh[:2 * n], np.float64)   # r, z: one sum
        out += [_matrix(f"W_IH{layer}", w_ih, precision), _matrix(f"W_HH{layer}", w_hh, precision),
                f"static const float B_RZ{layer}[{2 * n}] = {{{_floats(b_rz)}}};\n",
                f"static const float B_IN{layer}[{n}] = {{{_floats(b_ih[2 * n:])}}};\n",
                f"static const float B_HN{layer}[{n}] = {{{_floats(b_hh[2 * n:])}}};\n"]
    head_w, head_b = head_weights(w)
    return "".join(out) + _matrix("W_HEAD", head_w, precision) + \
        f"static const float B_HEAD[GRU_HORIZON] = {{{_floats(head_b)}}};\n"


def _layer_fn(layer: int, precision: str) -> str:
    """One GRU layer, unit by unit, so only the new state needs a buffer (PyTorch order r, z, n)."""
    def gate(g: int) -> tuple[str, str]:
        row = "r" if g == 0 else f"r + {g} * GRU_HIDDEN"
        return _dot(f"W_IH{layer}", row, "x", "nx", precision), _dot(f"W_HH{layer}", row, "h", "GRU_HIDDEN", precision)
    (ir, hr), (iz, hz), (i_n, h_n) = gate(0), gate(1), gate(2)
    return f"""static void layer{layer}(const float *x, int nx, const float *h, float *h_new)
{{
    int r;
    for (r = 0; r < GRU_HIDDEN; ++r) {{
        float rg = sigmoid_({ir} + {hr} + B_RZ{layer}[r]);
        float zg = sigmoid_({iz} + {hz} + B_RZ{layer}[r + GRU_HIDDEN]);
        float ng = tanh_({i_n} + B_IN{layer}[r] + rg * ({h_n} + B_HN{layer}[r]));
        h_new[r] = ng + zg * (h[r] - ng);
    }}
}}
"""


def _dot_fn(precision: str) -> str:
    """The C dot product the layers call: float weights, or int8 weights (times the row scale outside)."""
    if precision == "fp32":
        return ("static float dot(const float *w, const float *v, int n)\n{\n    float s = 0.0f;\n    int i;\n"
                "    for (i = 0; i < n; ++i) s += w[i] * v[i];\n    return s;\n}\n")
    return ("static float dot_q(const signed char *w, const float *v, int n)\n{\n    float s = 0.0f;\n    int i;\n"
            "    for (i = 0; i < n; ++i) s += (float)w[i] * v[i];\n    return s;\n}\n")


def _deadband(md: dict) -> tuple[str, str]:
    """(declaration, statement) of the deadband (runtime/forecaster.py; train/deadband.py), or empty.
    -DGRU_DEADBAND_OFF builds without it (the parity tests compare the graph itself)."""
    tau = md.get("deadband")
    if not tau or md.get("residual_input") is None:
        return "", ""
    return (f"#ifndef GRU_DEADBAND_OFF\nstatic const float DEADBAND[GRU_HORIZON] = {{{_floats(tau)}}};  /* a smaller change is no change */\n#endif\n",
            "#ifndef GRU_DEADBAND_OFF\n        if (change < DEADBAND[r] && -change < DEADBAND[r]) change = 0.0f;\n#endif\n")


def _base(md: dict) -> tuple[str, str, str, str]:
    """An AR base (runtime/residual.py; manifest model.base), or four empty strings: (its constants,
    the lags and base (declared there) before the head, the term the change gains, the lags kept in the state).

    The state array holds the GRU's L*H values, then the last GRU_BASE_LAGS normalized levels (newest
    first), then a flag (0: a fresh stream, whose missing levels are its first reading)."""
    base = md.get("base")
    if not base:
        return "", "", "", ""
    coef = np.asarray(base, np.float64)
    rows = ",\n    ".join("{" + _floats(r) + "}" for r in coef[:-1])
    const = (f"static const float BASE_COEF[GRU_BASE_LAGS][GRU_HORIZON] = {{\n    {rows}}};  /* row i: the level i steps back */\n"
             f"static const float BASE_CONST[GRU_HORIZON] = {{{_floats(coef[-1])}}};\n")
    j = md["residual_input"]
    before = (f"    float lag[GRU_BASE_LAGS], base[GRU_HORIZON];\n"
              f"    {{\n        const float *kept = h + GRU_LAYERS * GRU_HIDDEN;   /* the last levels, then the started flag */\n"
              f"        lag[0] = x[{j}];\n"
              f"        for (i = 1; i < GRU_BASE_LAGS; ++i) lag[i] = kept[GRU_BASE_LAGS] != 0.0f ? kept[i - 1] : x[{j}];\n"
              f"        for (r = 0; r < GRU_HORIZON; ++r) {{\n            base[r] = BASE_CONST[r];\n"
              f"            for (i = 0; i < GRU_BASE_LAGS; ++i) base[r] += lag[i] * BASE_COEF[i][r];\n        }}\n    }}\n")
    kept = ("    for (i = 0; i < GRU_BASE_LAGS; ++i) h[GRU_LAYERS * GRU_HIDDEN + i] = lag[i];\n"
            "    h[GRU_LAYERS * GRU_HIDDEN + GRU_BASE_LAGS] = 1.0f;\n")
    return const, before, f" + base[r] - x[{j}]", kept


# exp without libm: v = k ln2 + f (Cody-Waite, |f| <= ln2/2), e^f by its degree-7 Taylor polynomial
# (truncation < 6e-9 relative), 2^k written into the exponent bits; clamped to [-87, 88] so 2^k
# stays a normal float. Sigmoid and tanh through it are within a few float ulps (absolute).
MATH = """static float exp_(float v)
{
    union { float f; uint32_t u; } p;
    float k, f;
    v = v < -87.0f ? -87.0f : (v > 88.0f ? 88.0f : v);
    k = v * 1.44269504f;
    k = (float)(int32_t)(k < 0.0f ? k - 0.5f : k + 0.5f);
    f = (v - k * 0.693145752f) - k * 1.42860677e-06f;
    p.u = (uint32_t)((int32_t)k + 127) << 23;
    return p.f * (1.0f + f * (1.0f + f * (0.5f + f * (1.66666667e-1f + f * (4.16666667e-2f
        + f * (8.33333333e-3f + f * (1.38888889e-3f + f * 1.98412698e-4f)))))));
}
static float sigmoid_(float v) { return 1.0f / (1.0f + exp_(-v)); }
static float tanh_(float v) { return 2.0f / (1.0f + exp_(-2.0f * v)) - 1.0f; }
"""


def _scaler_constants(m: dict) -> str:
    """The input scaler (offset, 1 / scale) and the target's, as C constants."""
    sc, tsc = m["scaler"]["inputs"], m["scaler"]["targets"]
    inv = 1.0 / np.asarray(sc["scale"], np.float64)
    return (f"static const float IN_OFFSET[GRU_INPUTS] = {{{_floats(sc['offset'])}}};\n"
            f"static const float IN_INV_SCALE[GRU_INPUTS] = {{{_floats(inv)}}};\n"
            f"static const float OUT_SCALE = {c_float(tsc['scale'][0])};\n"
            f"static const float OUT_OFFSET = {c_float(tsc['offset'][0])};")


def source(m: dict, w: dict, precision: str) -> str:
    """gru_step.c: the scaler, the weights, the layers, the residual's base and deadband, gru_forecast."""
    md = m["model"]
    j = md.get("residual_input")
    layers = "".join(_layer_fn(k, precision) for k in range(md["num_layers"]))
    calls = "\n".join(f"    layer{k}({'x' if k == 0 else f'next + {k - 1} * GRU_HIDDEN'}, {'GRU_INPUTS' if k == 0 else 'GRU_HIDDEN'}, "
                      f"h + {k} * GRU_HIDDEN, next + {k} * GRU_HIDDEN);" for k in range(md["num_layers"]))
    head = _dot("W_HEAD", "r", "top", "GRU_HIDDEN", precision)
    level = f"x[{j}]" if j is not None else "0.0f"
    dead = _deadband(md)
    base = _base(md)
    dots = _dot_fn(precision)
    return f"""/* gru_step.c: generated by `python -m export.mcu` ({precision}) from bundle {m['bundle_id']}. */
#include <math.h>       /* isfinite only: no libm function is called */
#include <stdint.h>
#include "gru_step.h"

{_scaler_constants(m)}
{_weights(w, md, precision)}
{MATH}{dead[0]}{base[0]}
{dots}
{layers}
void gru_reset(float h[GRU_STATE_SIZE])
{{
    int i;
    for (i = 0; i < GRU_STATE_SIZE; ++i) h[i] = 0.0f;
}}

int gru_forecast(const float reading[GRU_INPUTS], float h[GRU_STATE_SIZE], float forecast[GRU_HORIZON])
{{
    float x[GRU_INPUTS];
    float next[GRU_LAYERS * GRU_HIDDEN];
    const float *top = next + (GRU_LAYERS - 1) * GRU_HIDDEN;
    int i, r;
    for (i = 0; i < GRU_INPUTS; ++i) {{
        if (!isfinite(reading[i])) return 1;
        x[i] = (reading[i] - IN_OFFSET[i]) * IN_INV_SCALE[i];
    }}
{calls}
{base[1]}    for (r = 0; r < GRU_HORIZON; ++r) {{
        float change = {head} + B_HEAD[r]{base[2]};
{dead[1]}        forecast[r] = (change + {level}) * OUT_SCALE + OUT_OFFSET;
    }}
    for (i = 0; i < GRU_LAYERS * GRU_HIDDEN; ++i) h[i] = next[i];
{base[3]}    return 0;
}}
"""


def series_view(m: dict, series) -> dict:
    """The manifest as a library for one sensor of series `series` sees it (as Forecaster.set_series
    does): that series' input scaler for the raw features (derived inputs keep the pooled one), its
    target scaler, and its own deadband and base where it has them; `m` itself for None.

    Raises:
        McuError: `series` is not one of the bundle's series.
    """
    if series is None:
        return m
    known = m.get("series") or {}
    why = not_a_series(known, series)
    if why:
        raise McuError(f"series {why}")
    own, n = known[series], len(m["features"])
    sc = m["scaler"]["inputs"]
    inputs = {**sc, **{k: list(own["inputs"][k][:n]) + list(sc[k][n:]) for k in ("offset", "scale")}}
    targets = {**m["scaler"]["targets"], **{k: own["targets"][k] for k in ("offset", "scale")}}
    md = {**m["model"], **{k: own[k] for k in ("deadband", "base") if own.get(k)}}
    return {**m, "scaler": {**m["scaler"], "inputs": inputs, "targets": targets}, "model": md, "mcu_series": series}


def write_library(bundle: str, out: str, precision: str = "fp32", force: bool = False, series=None) -> list[str]:
    """gru_step.h, gru_step.c and README.md in `out`; returns their paths. `series`: a library for a
    sensor of that series of a many-series bundle (`series_view`); else the pooled scale.

    `out` may be missing, empty or this function's own earlier output (replaced whole, atomically).
    Any other folder is refused with McuError naming what in it was not written here, unless
    `force`: then the three files are written into it and nothing else there is touched.
    """
    m = series_view(read_manifest(bundle), series)
    art = next(a for a in m["artifacts"] if a["engine"] == "numpy")
    w = load_weights(check_artifact(bundle, art), m["model"])
    files = {"gru_step.h": header(m), "gru_step.c": source(m, w, precision),
             "README.md": f"# gru_step ({precision})\n\nGenerated from bundle {m['bundle_id']} by `python -m export.mcu`. "
                          "Compile `gru_step.c` with your firmware as C99 (`-std=c99`, or `-ffp-contract=off`, keeps the "
                          "results reproducible across compilers); it needs no libm. See the header for the API and the input "
                          "order. The state `h` is yours: zero it for a fresh stream, keep it across calls, save it to "
                          "resume after a reset.\n"}
    foreign = foreign_entries(out)
    if foreign and not force:
        raise McuError(f"{out} holds files export.mcu did not write: {', '.join(foreign[:8])}"
                       f"{', ...' if len(foreign) > 8 else ''}; refusing to replace them; choose another --out or pass --force")
    about = {"bundle_id": m["bundle_id"], "precision": precision, **({"series": series} if series is not None else {})}
    if foreign:
        _write_files(out, files, about)
    else:
        _replace_folder(out, files, about)
    return [os.path.join(out, n) for n in files]


def foreign_entries(out: str) -> list[str]:
    """What in `out` this module did not write, or what was edited since: [] for a missing or empty
    folder or for its own earlier output (the marker's files, unchanged, and --report's folder)."""
    if not os.path.lexists(out):
        return []
    if not os.path.isdir(out):
        raise McuError(f"{out} exists and is not a folder; choose another --out")
    try:
        with open(os.path.join(out, MARKER), encoding="utf-8") as f:
            written = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        written = {}
    if not isinstance(written, dict) or not written:
        written = {}
    foreign = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if written and (name == MARKER or (name in OWN_FOLDERS and os.path.isdir(path) and not os.path.islink(path))):
            continue
        if name not in written or os.path.islink(path) or not os.path.isfile(path):
            foreign.append(name)
        elif sha256_file(path) != written[name]:
            foreign.append(f"{name} (edited since it was generated)")
    return foreign


def _write_files(folder: str, files: dict, about: dict) -> None:
    """Each file, then the marker (`about` and the files' digests), written beside its final name and
    renamed over it."""
    os.makedirs(folder, exist_ok=True)
    data = {name: text.encode("utf-8") for name, text in files.items()}
    marker = {"generator": "python -m export.mcu", **about, "files": {n: hashlib.sha256(b).hexdigest() for n, b in data.items()}}
    data[MARKER] = (json.dumps(marker, indent=2) + "\n").encode("utf-8")
    for name, blob in data.items():
        tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, os.path.join(folder, name))


def _replace_folder(out: str, files: dict, about: dict) -> None:
    """The files in a new folder beside `out`, swapped in whole when complete (export/writer's swap)."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temps(out)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-{os.getpid()}-")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)                 # mkdtemp's 0700 would outlive the swap
        _write_files(tmp, files, about)
        replace_dir_atomically(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
