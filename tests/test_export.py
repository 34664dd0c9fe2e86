"""Export stage: step graph, artifacts in their real engines, manifest schema, atomic writes."""
import json
import os

import numpy as np
import pytest
import torch

import export.assemble as eb
from conftest import run_module
from export.convert import FORBIDDEN_ONNX, FORBIDDEN_TFLITE, tflite_ops
from export.step import GRUStep, numpy_weights
from runtime.bundle import TIERS, load_weights, npz_layer_names, read_manifest, weight_shapes
from runtime.engines import open_engine, run_stream
from runtime.scaler import Scaler
from train.checkpoint import load_checkpoint, save_checkpoint
from train.model import RecurrentConfig, RecurrentModel

FLOAT_TIER = TIERS["fp32"]  # max abs error, normalized units: float32 rounding only (~1e-6 seen)


@pytest.mark.parametrize("layers", [1, 2])
def test_step_module_matches_torch_gru_over_a_stream(layers):
    torch.manual_seed(layers)
    model = RecurrentModel(RecurrentConfig(input_size=5, hidden_size=12, num_layers=layers, horizon=3, residual_input=1)).eval()
    torch.nn.init.normal_(model.head.weight)        # a non-zero head, so the check can fail
    x = torch.randn(3, 300, 5)
    ref, _ = model(x)
    step, h = GRUStep(model), torch.zeros(layers, 3, 12)
    got = []
    for t in range(300):
        y, h = step(x[:, t], h)
        got.append(y + x[:, t, 1:2])      # engines add the residual input back (export/step.py)
    assert torch.stack(got, 1).shape == ref.shape
    assert float((torch.stack(got, 1) - ref).abs().max().detach()) <= FLOAT_TIER


def test_step_refuses_lstm():
    with pytest.raises(ValueError, match="cannot export a 'lstm' checkpoint"):
        GRUStep(RecurrentModel(RecurrentConfig(input_size=3, hidden_size=4, cell="lstm")))


def test_weights_npz_is_named_by_the_one_map(tmp_path):
    """Export writes weights.npz, the runtime checks and reads it, all through runtime.bundle's map."""
    md = {"input_size": 3, "hidden_size": 4, "num_layers": 2, "output_size": 2}
    model = RecurrentModel(RecurrentConfig(input_size=3, hidden_size=4, num_layers=2, horizon=2)).eval()
    w = numpy_weights(GRUStep(model))
    assert {k: v.shape for k, v in w.items()} == weight_shapes(md)
    for layer in range(2):
        for npz, torch_name in npz_layer_names(layer).items():
            assert np.array_equal(w[npz], getattr(model.rnn, torch_name).detach().numpy())
    np.savez(tmp_path / "weights.npz", **w)
    assert set(load_weights(str(tmp_path / "weights.npz"), md)) == set(w)


def test_the_checkpoint_scaler_is_the_runtime_scaler(daphnet_bundle, daphnet_checkpoint):
    """One Scaler: training's (stored in the checkpoint) reads back exactly, and is the manifest's."""
    _, ck = load_checkpoint(daphnet_checkpoint)
    for part, key in (("inputs", "in_scaler"), ("targets", "out_scaler")):
        assert Scaler.from_dict(ck[key]).to_dict() == ck[key]
        assert read_manifest(daphnet_bundle)["scaler"][part] == ck[key]


def _engine_stream(bundle, art, xs):
    m = read_manifest(bundle)
    return run_stream(open_engine(os.path.join(bundle, art["file"]), art, m["model"], xs.shape[1]), xs)


@pytest.mark.parametrize("which", ["daphnet_bundle", "two_layer_bundle"])
def test_every_artifact_streams_like_pytorch(which, request):
    """≥1000 real readings stepped in the real engine vs PyTorch over the whole sequence."""
    bundle = request.getfixturevalue(which)
    m = read_manifest(bundle)
    model, ck = load_checkpoint(os.path.join(os.path.dirname(bundle), m["source"]["checkpoint"]))
    a, _ = ck["series"]["splits"]["test"][0]
    x = Scaler.from_manifest(m).normalize(ck["series"]["inputs"][a:a + 1200].numpy())
    assert len(x) >= 1000
    engines = {a["engine"] for a in m["artifacts"]}
    assert engines == {"numpy", "onnxruntime", "litert"}
    for art in m["artifacts"]:
        xs = eb.shifted_batch(x, art["batch"] or 3)
        got = _engine_stream(bundle, art, xs)
        ref = eb.sequence_reference(model, xs)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.max(np.abs(got - ref)) <= FLOAT_TIER, art["file"]


def test_no_sequence_ops_in_graphs(daphnet_bundle):
    import onnx
    ops = {n.op_type for n in onnx.load(os.path.join(daphnet_bundle, "step.onnx")).graph.node}
    assert "MatMul" in ops or "Gemm" in ops
    assert not ops & FORBIDDEN_ONNX
    for f in ("step.tflite", "step.b4.tflite"):
        tops = set(tflite_ops(os.path.join(daphnet_bundle, f)))
        assert "FULLY_CONNECTED" in tops and not tops & FORBIDDEN_TFLITE


def test_manifest_matches_schema_and_files(daphnet_bundle):
    import jsonschema
    schema = json.load(open(os.path.join(os.path.dirname(eb.__file__), "..", "runtime", "manifest.schema.json")))
    m = json.load(open(os.path.join(daphnet_bundle, "manifest.json")))
    jsonschema.validate(m, schema)
    assert not os.path.exists(os.path.join(daphnet_bundle, "step.onnx.data"))
    with np.load(os.path.join(daphnet_bundle, "golden.npz")) as g:
        assert g["inputs"].shape[0] >= 64 and "forecast/step.onnx" in g.files
    report = open(os.path.join(daphnet_bundle, "REPORT.md")).read()
    assert "## Gates" in report and os.path.getsize(os.path.join(daphnet_bundle, "gates.png")) > 0
    assert all(len(v["mae_per_step"]) == 6 for v in m["metrics"]["test"].values())
    assert "MAE per horizon step" in report and "![steps](steps.png)" in report
    # The oldest format that describes it: 7 with an AR base (the Daphnet model has one), else 4.
    assert m["format_version"] == (7 if m["model"].get("base") else 4) and len(m["model"]["deadband"]) == 6


def test_failed_export_keeps_previous_bundle(daphnet_bundle, daphnet_checkpoint, monkeypatch, tmp_path):
    import shutil
    out = tmp_path / "b"
    shutil.copytree(daphnet_bundle, out)
    before = open(out / "manifest.json").read()
    monkeypatch.setattr(eb, "parity", lambda *a, **k: 1.0)
    with pytest.raises(eb.ExportError, match="streaming parity failed"):
        eb.export_bundle(daphnet_checkpoint, str(out), formats=("onnx",))
    assert open(out / "manifest.json").read() == before
    assert sorted(os.listdir(tmp_path)) == ["b"]           # no half-written temp folder left


def test_bad_checkpoints_give_clear_errors(tmp_path):
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04 truncated")
    p = run_module("export", str(tmp_path / "trunc.pt"), "--out", str(tmp_path / "b"), check=False)
    assert p.returncode == 2 and "not a readable checkpoint" in p.stderr and "Traceback" not in p.stderr
    save_checkpoint(str(tmp_path / "lstm.pt"), RecurrentModel(RecurrentConfig(input_size=3, hidden_size=4, cell="lstm")), {})
    p = run_module("export", str(tmp_path / "lstm.pt"), "--out", str(tmp_path / "b"), check=False)
    assert p.returncode == 2 and "only GRU cells are exported" in p.stderr
    assert not (tmp_path / "b").exists()


def test_non_finite_weights_are_refused(daphnet_checkpoint, tmp_path):
    """A NaN weight used to pass parity (max(0.0, nan) == 0.0) and write 'parity 0.0'."""
    model, ck = load_checkpoint(daphnet_checkpoint)
    sd = ck["state_dict"]
    sd["rnn.weight_hh_l0"][0, 0] = float("nan")
    torch.save(ck, tmp_path / "nan.pt")
    p = run_module("export", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "b"), check=False)
    assert p.returncode == 2 and "non-finite weights in rnn.weight_hh_l0" in p.stderr
    assert not (tmp_path / "b").exists()


def test_parity_is_nan_aware(daphnet_bundle, daphnet_checkpoint):
    model, _ = load_checkpoint(daphnet_checkpoint)
    m = read_manifest(daphnet_bundle)
    x = np.zeros((8, m["model"]["input_size"]), np.float32)
    x[3, 0] = np.nan
    art = m["artifacts"][0]
    assert eb.parity(os.path.join(daphnet_bundle, art["file"]), art, model, m["model"], x, [1]) == float("inf")


def test_export_refuses_a_folder_that_is_not_a_bundle(daphnet_checkpoint, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not a bundle")
    p = run_module("export", daphnet_checkpoint, "--out", str(out), "--formats", "onnx", check=False)
    assert p.returncode == 2 and "is not a bundle" in p.stderr and "--force" in p.stderr
    assert (out / "holiday.jpg").exists()
    run_module("export", daphnet_checkpoint, "--out", str(out), "--formats", "onnx", "--force")
    assert not (out / "holiday.jpg").exists() and read_manifest(str(out))["bundle_id"]


def test_leftovers_of_a_killed_export_are_removed(daphnet_checkpoint, tmp_path):
    dead = tmp_path / ".b.tmp-999999999-abc"          # a pid that cannot be running
    dead.mkdir()
    (dead / "step.onnx").write_bytes(b"half")
    alive = tmp_path / f".b.tmp-{os.getpid()}-xyz"      # a run still going (this process): kept
    alive.mkdir()
    run_module("export", daphnet_checkpoint, "--out", str(tmp_path / "b"), "--formats", "onnx")
    assert not dead.exists() and alive.exists()
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, "b", "b.build.npz"])


# Names that would be Markdown or HTML if written raw: a table, a heading, code, links, emphasis,
# HTML, an entity; a newline and a backslash; `$...$`, which matplotlib would read as math.
MD_HOSTILE = [("T1 | `x` <b>bold</b>\n\n| a | b |\n|---|---|\n| c | d |\n# heading $\\oops{$", "deg|C\n\n## unit <i>"),
              ("[link](http://x) *em* _u_ a_b_c __d__ \\ &amp; <img src=x> ~~s~~", "m/s | 2")]


def _markdown_shape(text):
    """Every Markdown token type but text, counted (a name adds text only), and each inline's text."""
    from collections import Counter
    from markdown_it import MarkdownIt
    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text)
    inline = [t for t in tokens if t.type == "inline"]
    kinds = [t.type for t in tokens] + [c.type for t in inline for c in t.children]
    lines = ["".join(c.content for c in t.children if c.type in ("text", "text_special", "code_inline")) for t in inline]
    return Counter(k for k in kinds if k not in ("text", "text_special")), "\n".join(lines)


def test_hostile_names_leave_the_report_structure_alone(daphnet_bundle, tmp_path):
    """REPORT.md with hostile feature and target names has the same Markdown structure (tables, rows,
    headings, no HTML) as with plain ones, and shows each name whole, control characters as escapes."""
    from conftest import copy_bundle, reseal
    from export.report import write_report
    plain = copy_bundle(daphnet_bundle, tmp_path / "plain")
    write_report(plain, read_manifest(plain))
    b = copy_bundle(daphnet_bundle, tmp_path / "b")
    m = read_manifest(b)
    for f, (name, unit) in zip(m["features"], MD_HOSTILE):
        f.update(name=name, unit=unit)
    m["targets"][0].update(m["features"][0])
    reseal(b, m)
    write_report(b, read_manifest(b))
    want, got = (open(os.path.join(x, "REPORT.md"), encoding="utf-8").read() for x in (plain, b))
    assert sum(ln.startswith("|") for ln in got.splitlines()) == sum(ln.startswith("|") for ln in want.splitlines())
    (want_kinds, _), (got_kinds, text) = _markdown_shape(want), _markdown_shape(got)
    assert got_kinds == want_kinds
    for s in [name for name, _ in MD_HOSTILE] + [MD_HOSTILE[0][1]]:         # names, and the target's unit
        assert s.replace("\\", "\\\\").replace("\n", "\\n") in text, s
