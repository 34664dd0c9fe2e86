"""Reading and checking a bundle: manifest.json + artifacts + golden vectors.

The runtime refuses a bundle whose format is unknown, whose id does not match its content,
whose checksums do not match, whose files are not plain names inside the bundle folder, or
whose fields are missing or disagree, with one message naming the file and the field.
The device cannot import jsonschema: `check_manifest` is a hand check of every field the
runtime reads (the full JSON schema, runtime/manifest.schema.json, is checked on the workstation).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat

import numpy as np

from .derived import check_section, series_ids
from .readings import UNIT_RULE, unit_ok

FORMAT = "gru-edge-bundle"
# 2: the bundle id is a digest over the manifest's content (which lists every artifact's
# sha256), golden outputs are stored in raw units, file names must be plain. Version 1 bundles
# are still read (their id covers the artifacts only). 3: the optional `derived_inputs` section
# (calendar inputs computed from each reading's time, runtime/derived.py); model.input_size is
# the raw features plus the derived inputs. Versions 1 and 2 are still read. 5: derived inputs
# on an IANA time zone (`derived_inputs.timezone`, runtime/times.py): a runtime that predates it
# refuses the bundle rather than compute its calendar inputs on the wrong clock. A bundle is
# written with the oldest version that describes it (`format_version_for`).
FORMAT_VERSION = 10         # 10: series.<id>.base (an AR base per series);
                            # 9: derived inputs of kind series (each stream's series identity);
                            # 8: series.<id>.deadband (a deadband per series); 7: model.base (an AR base);
                            # 6: series (per-series scalers); 5: derived_inputs.timezone;
                            # 4: model.deadband; 3: derived_inputs; 2: content-digest id
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
MAX_BASE_LAGS = 256         # an AR base's p: the device keeps p levels per stream (4p bytes)
ENGINE_NAMES = ("numpy", "onnxruntime", "litert")
PRECISIONS = ("fp32", "int8", "int16")
SIGNATURE_FILE = "manifest.sig"
SIGNATURE_NAMESPACE = "gru-edge-bundle"     # ssh-keygen -Y sign/verify -n
BUNDLE_ID = re.compile(r"[0-9a-f]{16}")
# Named tolerance tiers, max abs error in normalized output units. float: the same math in
# another engine differs only by float32 rounding (~1e-6 seen). For golden vectors each artifact
# is compared with its own outputs recorded at export, so quantized artifacts get a tier that
# only allows rounding differences between CPUs, not the quantization error itself.
TIERS = {"fp32": 1e-4, "int16": 2e-3, "int8": 2e-2}


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the problem."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_id(manifest: dict) -> str:
    """The id of a version-2 manifest: sha256 over its canonical JSON without `bundle_id`.

    The manifest lists every artifact's sha256, so any edit to the manifest or to any artifact
    gives another id. Mirrors the writer in export/writer.py, which stores this value.
    """
    body = {k: v for k, v in manifest.items() if k != "bundle_id"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def legacy_bundle_id(manifest: dict) -> str:
    """Version 1: a digest over the artifacts' and golden file's sha256 only."""
    ids = "".join(a["sha256"] for a in manifest["artifacts"]) + manifest["golden"]["sha256"]
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def plain_name(name, where: str) -> str:
    """`name` if it is a plain file name (no folder part, not . or .., printable, not starting with
    '-': a name is also a word on tar's and sh's command lines); else BundleError."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or name != name.strip() or name.startswith("-") or not name.isprintable()):
        raise BundleError(f"{where}: {name!r} is not a plain file name inside the bundle folder")
    return name


def bundle_file(bundle: str, name, where: str) -> str:
    """Path of a file the manifest names: a plain name, a regular file, not a symlink."""
    path = os.path.join(bundle, plain_name(name, where))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: {where} names a file that is missing") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleError(f"{path}: {where} is a symbolic link; bundle files must be regular files")
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path}: {where} is not a regular file")
    return path


# -- the hand check of the fields the runtime reads --------------------------------------------
class _Check:
    """Small typed getters that raise one BundleError naming the manifest file and the field."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, field: str, what: str):
        raise BundleError(f"{self.path}: field '{field}' {what}")

    def get(self, obj: dict, key: str, field: str, kind, optional=False):
        if not isinstance(obj, dict) or key not in obj:
            if optional:
                return None
            self.fail(field, "is missing")
        v = obj[key]
        if v is None and optional:
            return None
        ok = isinstance(v, kind) and not (kind in (int, (int, float)) and isinstance(v, bool))
        if not ok:
            names = {dict: "an object", list: "a list", str: "a string", int: "an integer", (int, float): "a number"}
            self.fail(field, f"is {type(v).__name__} {str(v)[:40]!r}; expected {names.get(kind, kind)}")
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(field, f"is {v}; expected a finite number")
        return v

    def count(self, obj, key, field, lo=1, hi=None):
        v = self.get(obj, key, field, int)
        if v < lo or (hi is not None and v > hi):
            self.fail(field, f"is {v}; expected {lo}..{hi}" if hi is not None else f"is {v}; expected >= {lo}")
        return v

    def numbers(self, obj, key, field, length, positive=False):
        v = self.get(obj, key, field, list)
        if len(v) != length:
            self.fail(field, f"has {len(v)} entries; expected {length}")
        for i, x in enumerate(v):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                self.fail(f"{field}[{i}]", f"is {x!r}; expected a finite number")
            if positive and not x > 0:
                self.fail(f"{field}[{i}]", f"is {x}; expected > 0 (a scale of 0 would divide by zero)")
        return v


def _check_model(c: _Check, m: dict) -> dict:
    md = c.get(m, "model", "model", dict)
    n_in = c.count(md, "input_size", "model.input_size")
    c.count(md, "hidden_size", "model.hidden_size")
    c.count(md, "num_layers", "model.num_layers")
    horizon = c.count(md, "horizon", "model.horizon")
    c.count(md, "output_size", "model.output_size", horizon, horizon)
    if md.get("cell", "gru") != "gru":
        c.fail("model.cell", f"is {md.get('cell')!r}; only 'gru' bundles exist")
    j = c.get(md, "residual_input", "model.residual_input", int, optional=True)
    if j is not None and not 0 <= j < n_in:
        c.fail("model.residual_input", f"is {j}; expected an input index 0..{n_in - 1} or null")
    if md.get("deadband"):
        _check_deadband(c, md, "model.deadband", j, horizon)
    if md.get("base"):
        _check_base(c, md["base"], "model.base", j, horizon)
    return md


def _check_deadband(c: _Check, obj: dict, field: str, j, horizon: int) -> None:
    """A deadband's thresholds (runtime/residual.py): one per horizon step, >= 0, on a residual model."""
    if j is None:
        c.fail(field, "is set on a model without residual_input; expected [] or none")
    tau = c.numbers(obj, "deadband", field, horizon)
    if min(tau) < 0:
        c.fail(field, f"has {min(tau)}; expected thresholds >= 0")


def _check_base(c: _Check, base, field: str, j, horizon: int) -> None:
    """model.base (format 7) or series.<id>.base (format 10), runtime/residual.base_of: [p + 1][horizon]
    finite coefficients, 1 <= p <= MAX_BASE_LAGS."""
    if j is None:
        c.fail(field, "is set on a model without residual_input; expected [] or none")
    if not isinstance(base, list) or not 2 <= len(base) <= MAX_BASE_LAGS + 1:
        c.fail(field, f"expected a list of p + 1 rows (1 <= p <= {MAX_BASE_LAGS}) of {horizon} coefficients")
    for i, row in enumerate(base):
        c.numbers({"row": row}, "row", f"{field}[{i}]", horizon)


def _check_io(c: _Check, m: dict, n_in: int) -> None:
    feats = c.get(m, "features", "features", list)
    try:
        derived = [d["name"] for d in check_section(m.get("derived_inputs"))]
    except ValueError as e:
        c.fail("derived_inputs", str(e))
    if len(feats) + len(derived) != n_in:
        c.fail("features", f"lists {len(feats)} features and {len(derived)} derived inputs; model.input_size is {n_in}")
    names = [c.get(f, "name", f"features[{i}].name", str) for i, f in enumerate(feats)] + derived
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        c.fail("features", f"names {', '.join(dup)} more than once")
    targets = c.get(m, "targets", "targets", list)
    if len(targets) != 1:
        c.fail("targets", f"lists {len(targets)} targets; this runtime forecasts exactly one")
    c.get(targets[0], "name", "targets[0].name", str)
    sc = c.get(m, "scaler", "scaler", dict)
    for part, n in (("inputs", n_in), ("targets", 1)):
        s = c.get(sc, part, f"scaler.{part}", dict)
        c.numbers(s, "offset", f"scaler.{part}.offset", n)
        c.numbers(s, "scale", f"scaler.{part}.scale", n, positive=True)
    period = c.get(m, "sample_period_s", "sample_period_s", (int, float), optional=True)
    if period is not None and period <= 0:
        c.fail("sample_period_s", f"is {period}; expected > 0 or null")
    phase = c.get(m, "sample_phase_s", "sample_phase_s", (int, float), optional=True)
    if phase is not None and not (period and 0 <= phase < period):
        c.fail("sample_phase_s", f"is {phase}; expected seconds from 0 to the sample period ({period})")


def _check_artifacts(c: _Check, m: dict) -> None:
    arts = c.get(m, "artifacts", "artifacts", list)
    if not arts:
        c.fail("artifacts", "is empty: the bundle has nothing to run")
    seen = set()
    for i, a in enumerate(arts):
        f = f"artifacts[{i}]"
        plain_name(c.get(a, "file", f + ".file", str), f"{c.path}: field '{f}.file'")
        if a["file"] in seen:
            c.fail(f + ".file", f"repeats {a['file']!r}")
        seen.add(a["file"])
        for key, choices in (("engine", ENGINE_NAMES), ("precision", PRECISIONS)):
            if c.get(a, key, f"{f}.{key}", str) not in choices:
                c.fail(f"{f}.{key}", f"is {a[key]!r}; expected one of {', '.join(choices)}")
        if a.get("batch") is not None:
            c.count(a, "batch", f + ".batch")
        if not re.fullmatch(r"[0-9a-f]{64}", c.get(a, "sha256", f + ".sha256", str)):
            c.fail(f + ".sha256", "is not 64 lowercase hex digits")
        c.count(a, "bytes", f + ".bytes")
        if a.get("input_scale") is not None:
            c.numbers(a, "input_scale", f + ".input_scale", m["model"]["input_size"], positive=True)
    g = c.get(m, "golden", "golden", dict)
    plain_name(c.get(g, "file", "golden.file", str), f"{c.path}: field 'golden.file'")
    c.get(g, "sha256", "golden.sha256", str)


def _check_intervals(c: _Check, m: dict) -> None:
    iv = c.get(m, "intervals", "intervals", dict)
    for i, lv in enumerate(c.get(iv, "levels", "intervals.levels", list)):
        if isinstance(lv, bool) or not isinstance(lv, (int, float)) or not 0 < lv < 1:
            c.fail(f"intervals.levels[{i}]", f"is {lv!r}; expected a level in (0, 1)")
    probs = c.get(iv, "probs", "intervals.probs", list)
    c.numbers(iv, "probs", "intervals.probs", len(probs))
    if len(probs) < 2 or probs != sorted(probs) or probs[0] != 0 or probs[-1] != 1:
        c.fail("intervals.probs", "must rise from 0 to 1")
    rows = c.get(iv, "error_quantiles", "intervals.error_quantiles", list)
    if len(rows) != m["model"]["horizon"]:
        c.fail("intervals.error_quantiles", f"has {len(rows)} rows; expected one per horizon step ({m['model']['horizon']})")
    for k, row in enumerate(rows):
        c.numbers({"r": row}, "r", f"intervals.error_quantiles[{k}]", len(probs))


def _check_series(c: _Check, m: dict, n_in: int) -> None:
    """`series`: {id: {inputs: {offset, scale} [I], targets: {offset, scale} [O]}} per known series,
    and optionally its own `deadband` [horizon] (format 8) and `base` (format 10) in place of the model's,
    and the `units` it writes in a column whose series differ (optional)."""
    n_out = len(c.get(m, "targets", "targets", list))
    md = m["model"]
    for sid, sc in c.get(m, "series", "series", dict).items():
        c.get({"s": sc}, "s", f"series.{sid}", dict)
        for part, n in (("inputs", n_in), ("targets", n_out)):
            s = c.get(sc, part, f"series.{sid}.{part}", dict)
            c.numbers(s, "offset", f"series.{sid}.{part}.offset", n)
            c.numbers(s, "scale", f"series.{sid}.{part}.scale", n, positive=True)
        if sc.get("deadband"):
            _check_deadband(c, sc, f"series.{sid}.deadband", md.get("residual_input"), md["horizon"])
        if "units" in sc:
            _check_units(c, m, c.get(sc, "units", f"series.{sid}.units", dict), f"series.{sid}.units")
        if sc.get("base"):
            if not md.get("base"):
                c.fail(f"series.{sid}.base", "is set on a model without model.base; expected none (a stream of "
                                             "no known series needs the model's base)")
            _check_base(c, sc["base"], f"series.{sid}.base", md.get("residual_input"), md["horizon"])


def _check_units(c: _Check, m: dict, units: dict, field: str) -> None:
    """A series' own units: {a feature's or the target's name: its unit (readings.unit_ok)}."""
    names = {f.get("name") for f in m.get("features") or ()} | {t.get("name") for t in m.get("targets") or ()}
    bad = [k for k, v in units.items() if k not in names or not unit_ok(v)]
    if bad:
        c.fail(field, f"names {str(bad[0])[:40]!r}: expected a feature's or the target's name and its unit "
                      f"({UNIT_RULE})")


def _check_identity(c: _Check, m: dict) -> None:
    """Each series identity input (format 9) names a series that `series` lists (else no stream could be it)."""
    missing = [i for i in series_ids(m.get("derived_inputs")) if i not in (m.get("series") or {})]
    if missing:
        c.fail("derived_inputs", f"has series inputs for {', '.join(map(repr, missing[:3]))}, which 'series' "
                                 "does not list; expected one input per series the bundle knows")


def format_version_for(m: dict) -> int:
    """The oldest format version that describes manifest `m`: 10 when a series has its own AR base
    (`series.<id>.base`: a runtime must switch a stream's coefficients with its series), 9 when its
    derived inputs hold the series' identity (kind series: a runtime must set each stream's), 8 when
    a series has its own deadband (`series.<id>.deadband`: a runtime must switch a stream's
    thresholds with its series), 7 when its model has an AR base (`model.base`: a runtime must keep
    each stream's last levels), 6 when it carries per-series scalers (`series`: a runtime must
    switch a stream's normalization to its series), 5 when its derived inputs are on an IANA time
    zone, else 4 (so older runtimes keep reading what they compute right)."""
    d, series = m.get("derived_inputs"), m.get("series")
    own = [s for s in series.values() if isinstance(s, dict)] if isinstance(series, dict) else []
    if any(s.get("base") for s in own):
        return 10
    if series_ids(d):
        return 9
    if any(s.get("deadband") for s in own):
        return 8
    if isinstance(m.get("model"), dict) and m["model"].get("base"):
        return 7
    if m.get("series"):
        return 6
    return 5 if isinstance(d, dict) and "timezone" in d else 4


def check_manifest(m, path: str = "manifest.json") -> dict:
    """Every field the runtime reads, with its type, range and cross-field agreement."""
    c = _Check(path)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        got = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise BundleError(f"{path}: format {got!r} is not {FORMAT!r}")
    if m.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(f"{path}: unknown format_version {m.get('format_version')!r}; this runtime reads "
                          f"versions {', '.join(map(str, READABLE_VERSIONS))}")
    need = format_version_for(m)
    if need >= 5 and need > m["format_version"]:      # (4's deadband is optional: 3 still reads)
        what = {10: "has an AR base per series ('series.<id>.base')",
                9: "has the series' identity as inputs (derived_inputs of kind 'series')",
                8: "has a deadband per series ('series.<id>.deadband')", 7: "has an AR base ('model.base')",
                6: "carries per-series scalers ('series')"}.get(
            need, "has derived_inputs with a 'timezone'")
        c.fail("format_version", f"is {m['format_version']}; a bundle that {what} is format {need}")
    md = _check_model(c, m)
    _check_io(c, m, md["input_size"])
    if m.get("series") is not None:
        _check_series(c, m, md["input_size"])
    _check_identity(c, m)
    _check_artifacts(c, m)
    if m.get("intervals") is not None:
        _check_intervals(c, m)
    bid = c.get(m, "bundle_id", "bundle_id", str)
    if not BUNDLE_ID.fullmatch(bid):
        c.fail("bundle_id", f"is {bid[:40]!r}; expected 16 lowercase hex digits")
    want = bundle_id(m) if m["format_version"] >= 2 else legacy_bundle_id(m)
    if bid != want:
        raise BundleError(f"{path}: bundle_id {bid} does not match the manifest's content ({want}): the "
                          "manifest or an artifact entry was edited after the bundle was built")
    return m


def read_manifest(bundle: str) -> dict:
    """Parse manifest.json and check it (`check_manifest`); raises BundleError naming the field."""
    path = os.path.join(bundle, "manifest.json")
    if not os.path.isdir(bundle):
        raise BundleError(f"bundle {bundle} is not a folder")
    if not os.path.isfile(path):
        raise BundleError(f"{path} is missing: not a bundle (make one with `python -m export`)")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise BundleError(f"{path} is not valid JSON: nested too deeply") from None
    return check_manifest(m, path)


def check_artifact(bundle: str, art: dict) -> str:
    """Path of an artifact after checking it is a plain regular file whose size and sha256 match."""
    path = bundle_file(bundle, art["file"], f"artifact {art['file']!r}")
    size = os.path.getsize(path)
    if size != art["bytes"]:
        raise BundleError(f"{path}: {size} bytes, manifest says {art['bytes']} (truncated or replaced)")
    digest = sha256_file(path)
    if digest != art["sha256"]:
        raise BundleError(f"{path}: checksum mismatch (sha256 {digest[:12]}…, manifest {art['sha256'][:12]}…)")
    return path


def check_golden(bundle: str, manifest: dict) -> str:
    """Path of golden.npz after the same checks as an artifact."""
    g = manifest["golden"]
    path = bundle_file(bundle, g["file"], "golden vectors")
    if sha256_file(path) != g["sha256"]:
        raise BundleError(f"{path}: golden vectors checksum mismatch")
    return path


# -- weights.npz: the one weight-name map --------------------------------------------------------
# weights.npz name ↔ PyTorch name. Per GRU layer: `l{layer}.{npz}` ↔ nn.GRU's `{torch}_l{layer}`
# (gate rows in PyTorch order r, z, n); the head: `head.w` [O, H], `head.b` [O] ↔ nn.Linear's
# `weight`, `bias` (train/model.RecurrentModel.head; an ensemble's members merged first). Every
# reader and writer goes through the functions below: export/step.numpy_weights (the writer),
# load_weights (the check), NumpyEngine, export.mcu (the C generator), quantize's input scaling
# and bench's PyTorch rebuild.
WEIGHT_NAMES = (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))
HEAD_NAMES = (("head.w", "weight"), ("head.b", "bias"))


def npz_layer_names(layer: int) -> dict:
    """{npz name: PyTorch name} for one GRU layer, in WEIGHT_NAMES order, e.g. 'l0.w_ih' → 'weight_ih_l0'."""
    return {f"l{layer}.{short}": f"{long}_l{layer}" for short, long in WEIGHT_NAMES}


def layer_weights(weights, layer: int) -> tuple:
    """(w_ih [3H, I], w_hh [3H, H], b_ih [3H], b_hh [3H]) of one layer from a weights mapping."""
    return tuple(weights[name] for name in npz_layer_names(layer))


def head_weights(weights) -> tuple:
    """(head.w [O, H], head.b [O]) from a weights mapping."""
    return tuple(weights[name] for name, _ in HEAD_NAMES)


def weight_shapes(md: dict) -> dict:
    """{npz name: shape} that the manifest's model section implies, every layer and the head."""
    i, h, o = md["input_size"], md["hidden_size"], md["output_size"]
    (head_w, _), (head_b, _) = HEAD_NAMES
    shapes = {head_w: (o, h), head_b: (o,)}
    for layer in range(md["num_layers"]):
        w_ih, w_hh, b_ih, b_hh = npz_layer_names(layer)
        shapes.update({w_ih: (3 * h, i if layer == 0 else h), w_hh: (3 * h, h), b_ih: (3 * h,), b_hh: (3 * h,)})
    return shapes


def load_weights(path: str, md: dict) -> dict:
    """weights.npz as float32 arrays, with every shape checked against the manifest's model section."""
    try:
        with np.load(path, allow_pickle=False) as z:
            weights = {k: z[k] for k in z.files}
    except Exception as e:   # a corrupt zip raises BadZipFile, EOFError, ValueError, OSError...
        raise BundleError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from None
    for name, shape in weight_shapes(md).items():
        if name not in weights:
            raise BundleError(f"{path}: weight {name} missing")
        if tuple(weights[name].shape) != shape:
            raise BundleError(f"{path}: {name} has shape {tuple(weights[name].shape)}, the manifest's "
                              f"model implies {shape}")
        if not np.isfinite(weights[name]).all():
            raise BundleError(f"{path}: {name} has non-finite values")
    return weights
