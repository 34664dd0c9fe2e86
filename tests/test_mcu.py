"""The generated C library (export.mcu): warning-free C99, parity with the numpy reference over a
long real stream on the host, and under qemu-system-arm on Cortex-M4F, M7 and M3 when the ARM
toolchain is installed (make test installs it)."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import runtime
from conftest import ROOT

CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O2"]
# Tiers, in normalized output units (error / the target's training std): fp32 is the same math in
# float32 with another summation order (~1e-6 seen); int8 weights with a per-row scale and float
# activations drift like ONNX dynamic int8 (the RMSE tier is the quantize budget, 1%).
FP32_TIER = 1e-4
INT8_RMSE_TIER = 0.01
STREAM = 2000


def _stream_inputs(bundle):
    with np.load(str(bundle) + ".build.npz") as z:
        meta = json.loads(str(z["meta"]))
        a, b = max(meta["splits"]["test"], key=lambda r: r[1] - r[0])
        x = z["inputs"][a:b][:STREAM]
    assert len(x) >= 1000 and np.isfinite(x).all()
    return x


def _build(bundle, out, precision, deadband=False):
    """The example streamer on the host; without the deadband unless asked (parity of the step itself)."""
    from export.mcu import write_library
    write_library(bundle, str(out), precision)
    exe = out / "gru_stream"
    subprocess.run(["gcc", *CFLAGS, *([] if deadband else ["-DGRU_DEADBAND_OFF"]), f"-I{out}", os.path.join(ROOT, "examples", "mcu", "stream.c"),
                    str(out / "gru_step.c"), "-lm", "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def _run(exe, readings):
    text = "\n".join(",".join(f"{v:.9g}" for v in r) for r in readings) + "\n"
    p = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True)
    return p.stdout.splitlines()


@pytest.fixture(scope="module")
def reference(daphnet_bundle):
    x = _stream_inputs(daphnet_bundle)
    fc = runtime.load(daphnet_bundle, engine="numpy", deadband=False)
    return x, np.stack([fc.step(r) for r in x]), float(fc.manifest["scaler"]["targets"]["scale"][0])


def test_the_deadband_is_applied_as_the_runtime_applies_it(daphnet_bundle, reference, tmp_path):
    """With the deadband, C and the runtime agree, except where the change sits at a threshold
    (within float32 rounding of it), where either side may fall."""
    x, raw, scale = reference
    fc = runtime.load(daphnet_bundle, engine="numpy")
    tau = np.asarray(fc.manifest["model"]["deadband"])
    assert tau.max() > 0, "the test bundle's deadband is all 0: nothing is checked"
    want = np.stack([fc.step(r) for r in x])
    got = np.array([[float(v) for v in line.split(",")] for line in _run(_build(daphnet_bundle, tmp_path, "fp32", True), x)])
    assert (want != raw).mean() > 0.05                    # the deadband moved some forecasts
    change = np.abs(raw - x[:, fc.manifest["model"]["residual_input"], None]) / scale    # the graph's |change|, normalized
    off = np.abs(got - want) / scale > FP32_TIER
    assert np.all(np.abs(change[off] - np.broadcast_to(tau, change.shape)[off]) < 1e-4), off.sum()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_host_build_matches_the_numpy_reference(daphnet_bundle, reference, tmp_path, precision):
    x, want, scale = reference
    exe = _build(daphnet_bundle, tmp_path, precision)
    got = np.array([[float(v) for v in line.split(",")] for line in _run(exe, x)])
    assert got.shape == want.shape
    err = (got - want) / scale
    if precision == "fp32":
        assert np.max(np.abs(err)) <= FP32_TIER
    else:
        rmse = float(np.sqrt(np.mean(err ** 2)))
        assert 0 < rmse <= INT8_RMSE_TIER, rmse


def test_a_non_finite_reading_is_refused_and_leaves_the_state(daphnet_bundle, reference, tmp_path):
    x, want, _ = reference
    exe = _build(daphnet_bundle, tmp_path, "fp32")
    bad = x[3].copy()
    bad[1] = np.nan
    lines = _run(exe, [x[0], x[1], x[2], bad, x[3], x[4]])
    assert lines[3] == "skip"
    got = np.array([[float(v) for v in ln.split(",")] for ln in lines[4:]])
    assert np.allclose(got, want[3:5], rtol=1e-5, atol=1e-4)     # as if the bad reading never came


def test_the_header_names_the_inputs_and_sizes(daphnet_bundle, tmp_path):
    from export.mcu import write_library
    write_library(daphnet_bundle, str(tmp_path), "int8")
    h = (tmp_path / "gru_step.h").read_text()
    m = runtime.read_manifest(daphnet_bundle)
    assert f"#define GRU_INPUTS {m['model']['input_size']}" in h and "#define GRU_HORIZON 6" in h
    assert all(f["name"] in h for f in m["features"]) and "GRU_STATE_SIZE" in h
    c = (tmp_path / "gru_step.c").read_text()
    assert "malloc" not in c and "#include <math.h>" in c and "#include <stdint.h>" in c and c.count("#include") == 3
    assert not any(f"{fn}(" in c for fn in ("expf", "tanhf", "fabsf")), "the library calls libm"


@pytest.mark.skipif(not shutil.which("arm-none-eabi-gcc") or not shutil.which("qemu-system-arm"),
                    reason="the ARM toolchain and qemu-system-arm are not installed (make test installs them)")
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m7", "cortex-m3"])
def test_cortex_m_parity_under_qemu(daphnet_bundle, reference, tmp_path, cpu):
    from export.mcu_target import build_target, run_target
    x, want, scale = reference
    n = 300
    elf = build_target(daphnet_bundle, str(tmp_path), cpu, "fp32", x[:n], want[:n], scale, FP32_TIER)
    code, out = run_target(elf, cpu)
    assert code == 0, out
    assert "parity ok" in out


@pytest.mark.skipif(not shutil.which("arm-none-eabi-gcc") or not shutil.which("qemu-system-arm"),
                    reason="the ARM toolchain and qemu-system-arm are not installed (make test installs them)")
def test_the_instruction_count_basis_is_calibrated(tmp_path):
    """A loop of exactly 30,000 instructions reads as 750 SysTick ticks: 40 instructions per tick."""
    from export import mcu_target as mt
    (tmp_path / "lib").mkdir()
    for name, text in (("startup.c", mt.STARTUP), ("link.ld", mt.LINKER_SCRIPT)):
        (tmp_path / name).write_text(text)
    loop = '__asm__ volatile("mov r2, #10000\\n1: subs r2, r2, #1\\n nop\\n bne 1b" ::: "r2", "cc"); (void)t;'
    src = mt.COST_MAIN.replace('#include "gru_step.h"', "").replace(
        "static float h[GRU_STATE_SIZE];\n    float reading[GRU_INPUTS] = {0}, forecast[GRU_HORIZON];\n", "").replace(
        "gru_forecast(reading, h, forecast);                  /* warm */", "").replace(
        "for (t = 0; t < STEPS; ++t) gru_forecast(reading, h, forecast);", loop)
    (tmp_path / "cost.c").write_text(src)
    elf = str(tmp_path / "cal.elf")
    mt._compile(str(tmp_path), "cortex-m4", [str(tmp_path / "startup.c"), str(tmp_path / "cost.c")], elf, ["-DSTEPS=1"])
    import subprocess as sp
    p = sp.run(["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-nographic", "-monitor", "none", "-serial",
                "none", "-icount", "shift=0", "-semihosting-config", "enable=on,target=native", "-kernel", elf],
               capture_output=True, text=True, timeout=60)
    ticks = int((p.stdout + p.stderr).strip().splitlines()[-1])
    assert ticks * mt.INSNS_PER_TICK == 30_000


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_library_compiles_without_a_warning(two_layer_bundle, tmp_path, compiler, precision):
    """Any number of layers (this bundle has two), C99, -Wall -Wextra -Wpedantic -Werror."""
    if not shutil.which(compiler):
        pytest.fail(f"{compiler} is not installed (make test installs it)")
    from export.mcu import write_library
    write_library(two_layer_bundle, str(tmp_path), precision)
    p = subprocess.run([compiler, *CFLAGS, "-c", str(tmp_path / "gru_step.c"), "-o", str(tmp_path / "g.o")],
                       capture_output=True, text=True)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr


# The header, `date,T1,RH_1 */ int injected_by_csv_name = 1; /*,T2[degC */ int
# injected_by_csv_unit = 2; /*],RH_2`, as (name, unit) per feature; and names aimed at every other
# way text becomes C: a quote, a backslash, a newline, a trigraph (??/ is a backslash in C99), a
# format sign, a non-ASCII unit and a bidi override.
HOSTILE = {"issue": [("T1", ""), ("RH_1 */ int injected_by_csv_name = 1; /*", ""),
                     ("T2", "degC */ int injected_by_csv_unit = 2; /*"), ("RH_2", "")],
           "every": [("T1 \" \\", "degC"), ("RH_1 */ int injected_by_csv_name = 1; /*", "% */ int injected_by_csv_unit = 2; /*"),
                     ("line\nbreak ??/\n*/ int x;", "??/"), ("/*/ %s %n \\\n", "\u00b0C \u202e"), ("tab\there '?'", "")]}
PRINT_NAMES = r"""#include <stdio.h>
#include "gru_step.h"
static const char *const NAMES[GRU_INPUTS] = GRU_INPUT_NAMES;
static const char *const UNITS[GRU_INPUTS] = GRU_INPUT_UNITS;
int main(void)
{
    int i;
    for (i = 0; i < GRU_INPUTS; ++i) printf("%s%c%s%c", NAMES[i], 0, UNITS[i], 0);
    printf("%s%c%s%c", GRU_TARGET_NAME, 0, GRU_TARGET_UNIT, 0);
    return 0;
}
"""


@pytest.fixture(scope="module", params=sorted(HOSTILE))
def hostile_bundle(request, daphnet_bundle, tmp_path_factory):
    """The Daphnet bundle with hostile feature and target names and units written into its manifest
    (not through train's CSV reader, which refuses some of them), resealed."""
    from conftest import copy_bundle, reseal
    b = copy_bundle(daphnet_bundle, tmp_path_factory.mktemp("hostile") / "b")
    m = runtime.read_manifest(b)
    for f, (name, unit) in zip(m["features"], HOSTILE[request.param]):
        f.update(name=name, unit=unit)
    m["targets"][0].update(m["features"][0])
    reseal(b, m)
    return b


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_hostile_names_stay_text_in_the_c_library(hostile_bundle, tmp_path, compiler):
    """No name or unit becomes code: the object defines no injected symbol, the library compiles
    warning-free as C99, and every name and unit comes back intact from the header's string literals."""
    if not shutil.which(compiler):
        pytest.fail(f"{compiler} is not installed (make test installs it)")
    from conftest import run_module
    out = tmp_path / "lib"
    run_module("export.mcu", hostile_bundle, "--out", str(out))
    p = subprocess.run([compiler, "-std=c99", "-c", str(out / "gru_step.c"), "-o", str(tmp_path / "g.o")],
                       capture_output=True, text=True)
    if p.returncode == 0:
        symbols = subprocess.run(["nm", str(tmp_path / "g.o")], capture_output=True, text=True, check=True).stdout
        assert "injected_by_csv" not in symbols and "gru_forecast" in symbols, symbols
    p = subprocess.run([compiler, *CFLAGS, "-c", str(out / "gru_step.c"), "-o", str(tmp_path / "g.o")],
                       capture_output=True, text=True)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    (tmp_path / "names.c").write_text(PRINT_NAMES)
    subprocess.run([compiler, *CFLAGS, f"-I{out}", str(tmp_path / "names.c"), "-o", str(tmp_path / "names")],
                   check=True, capture_output=True, text=True)
    got = subprocess.run([str(tmp_path / "names")], capture_output=True, check=True).stdout.decode().split("\0")[:-1]
    m = runtime.read_manifest(hostile_bundle)
    want = [v for f in m["features"] + m["targets"] for v in (f["name"], f["unit"])]
    assert got == want
    assert (out / "gru_step.h").read_text().isascii()          # non-ASCII (the bidi override) escaped


def _mcu(bundle, out, *extra):
    from conftest import run_module
    return run_module("export.mcu", bundle, "--out", str(out), *extra, check=False)


def test_out_refuses_a_folder_it_did_not_write(daphnet_bundle, tmp_path):
    """--out never replaces files it did not write (nor ones edited since) without --force; an empty
    folder and its own previous output are fine."""
    out = tmp_path / "firmware"
    out.mkdir()
    readme, mine = "# my notes\n" + "x" * 71_000, "/* hand-written */\nint main(void) { return 0; }\n"
    (out / "README.md").write_text(readme)
    (out / "gru_step.c").write_text(mine)
    p = _mcu(daphnet_bundle, out)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert str(out) in p.stderr and "README.md" in p.stderr and "gru_step.c" in p.stderr and "--force" in p.stderr
    assert (out / "README.md").read_text() == readme and (out / "gru_step.c").read_text() == mine
    assert _mcu(daphnet_bundle, out, "--force").returncode == 0
    assert "gru_forecast" in (out / "gru_step.c").read_text()
    assert _mcu(daphnet_bundle, out, "--precision", "int8").returncode == 0       # its own output: replaced
    assert "dot_q" in (out / "gru_step.c").read_text()
    (out / "gru_step.h").write_text((out / "gru_step.h").read_text() + "/* my edit */\n")
    (out / "notes.txt").write_text("mine")
    p = _mcu(daphnet_bundle, out)
    assert p.returncode == 2 and "gru_step.h" in p.stderr and "notes.txt" in p.stderr, p.stderr
    assert (out / "notes.txt").exists() and "my edit" in (out / "gru_step.h").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _mcu(daphnet_bundle, empty).returncode == 0 and _mcu(daphnet_bundle, tmp_path / "new" / "lib").returncode == 0
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []     # no temp folder left


def test_a_name_too_long_for_a_c_literal_is_refused(daphnet_bundle, tmp_path):
    from conftest import copy_bundle, reseal
    b = copy_bundle(daphnet_bundle, tmp_path / "b")
    m = runtime.read_manifest(b)
    m["features"][3]["unit"] = "x" * 5000
    reseal(b, m)
    p = _mcu(b, tmp_path / "lib")
    assert p.returncode == 2 and "'features[3].unit'" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "lib").exists()


def test_sigmoid_and_tanh_without_libm_are_float_accurate(tmp_path):
    """The generated exp_/sigmoid_/tanh_ (no libm) against float64 over [-100, 100], on the host."""
    from export.mcu import MATH
    (tmp_path / "m.c").write_text('#include <stdio.h>\n#include <stdint.h>\n' + MATH + r"""
int main(void)
{
    int i;
    for (i = -200000; i <= 200000; ++i) {
        float v = (float)i * 5e-4f;
        printf("%.9g %.9g %.9g\n", v, sigmoid_(v), tanh_(v));
    }
    return 0;
}
""")
    exe = tmp_path / "m"
    subprocess.run(["gcc", *CFLAGS, "-Wno-unused-function", str(tmp_path / "m.c"), "-o", str(exe)], check=True)
    v, sig, tanh = np.loadtxt(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()).T
    assert np.max(np.abs(sig - 1 / (1 + np.exp(-v)))) < 3e-7
    assert np.max(np.abs(tanh - np.tanh(v))) < 5e-7
    assert np.all(np.isfinite(sig)) and sig.min() >= 0 and sig.max() <= 1


ARM = pytest.mark.skipif(not shutil.which("arm-none-eabi-gcc"), reason="the ARM toolchain is not installed")


def _program(bundle, folder, precision, cpu):
    from export.mcu import write_library
    from export import mcu_target as mt
    write_library(str(bundle), str(folder / "lib"), precision)
    for name, text in (("startup.c", mt.STARTUP), ("link.ld", mt.LINKER_SCRIPT)):
        (folder / name).write_text(text)
    return mt.program_size(str(folder), cpu)


@ARM
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m3"])
def test_the_whole_program_links_without_libm(daphnet_bundle, tmp_path, cpu):
    size = _program(daphnet_bundle, tmp_path, "int8", cpu)
    syms = subprocess.run(["arm-none-eabi-nm", str(tmp_path / f"app-{cpu}.elf")], capture_output=True, text=True).stdout
    assert not any(f" {s}\n" in syms for s in ("expf", "tanhf", "expm1f", "impure_data")), syms
    assert size["program_stack_bound"] > 0 and size["program_ram_bytes"] > size["program_stack_bound"]


DEMO = os.path.join(ROOT, "bundles", "demo")


@ARM
@pytest.mark.skipif(not os.path.exists(os.path.join(DEMO, "manifest.json")), reason="bundles/demo is not built")
def test_the_demo_int8_cortex_m4_program_fits_24k_flash_and_1k_ram(tmp_path):
    """The issue's budget for the whole int8 Cortex-M4 program (library, math, startup) on the linked image."""
    size = _program(DEMO, tmp_path, "int8", "cortex-m4")
    assert size["program_flash_bytes"] <= 24 * 1024, size
    assert size["program_ram_bytes"] <= 1024, size
