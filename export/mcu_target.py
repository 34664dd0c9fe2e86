"""Build, run and measure the generated C library (export.mcu) on emulated Cortex-M (qemu-system-arm,
mps2 boards), and record the measurements in the bundle (`record_report`, `python -m export.mcu --report`).

A bare-metal parity program: the vector table, a reset handler that zeroes .bss and enables the
FPU (CPACR) before any float instruction, the readings and the expected forecasts compiled in,
and ARM semihosting for the verdict (SYS_WRITE0) and the exit code (SYS_EXIT: 0 when every
forecast is within the tier). Built with arm-none-eabi-gcc -std=c99 (no fused multiply-adds, so
results match the host build), newlib's libm, no C runtime start files.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np

from .mcu import c_float, write_library

# cpu -> (QEMU machine, compiler flags)
TARGETS = {
    "cortex-m4": ("mps2-an386", ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]),
    "cortex-m7": ("mps2-an500", ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"]),
    "cortex-m3": ("mps2-an385", ["-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"]),
}

LINKER_SCRIPT = """MEMORY { CODE (rx) : ORIGIN = 0x00000000, LENGTH = 4M
         RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 4M }
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) *(.rodata*) . = ALIGN(4); } > CODE
  .data : { *(.data*) . = ALIGN(4); } > RAM
  .bss (NOLOAD) : { _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; } > RAM
  _estack = ORIGIN(RAM) + LENGTH(RAM);
  end = _ebss;
}
"""

STARTUP = r"""
extern unsigned long _sbss, _ebss, _estack;
int main(void);
int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}
static void stop(int ok) { semihost(0x18, (const void *)(ok ? 0x20026UL : 0x20023UL)); for (;;) {} }
void Reset_Handler(void)
{
    unsigned long *p;
    for (p = &_sbss; p < &_ebss; ++p) *p = 0;
#if defined(__ARM_FP)
    *(volatile unsigned long *)0xE000ED88UL |= (0xFUL << 20);    /* CPACR: CP10, CP11 full access */
    __asm__ volatile("dsb\n isb");
#endif
    stop(main() == 0);
}
void Fault_Handler(void) { semihost(0x04, "fault\n"); stop(0); }
__attribute__((section(".vectors"), used)) static const void *const vectors[16] = {
    &_estack, (const void *)Reset_Handler, (const void *)Fault_Handler, (const void *)Fault_Handler,
    (const void *)Fault_Handler, (const void *)Fault_Handler, (const void *)Fault_Handler};
"""


def _array(name: str, a: np.ndarray) -> str:
    rows = ",\n".join("    {" + ", ".join(c_float(v) for v in r) + "}" for r in a)
    return f"static const float {name}[{a.shape[0]}][{a.shape[1]}] = {{\n{rows}\n}};\n"


def parity_main(readings: np.ndarray, expected: np.ndarray, scale: float, tier: float) -> str:
    """main(): stream the readings, compare with the expected forecasts, report via semihosting."""
    return f"""#include <math.h>
#include "gru_step.h"
int semihost(int op, const void *arg);
{_array('READINGS', readings)}{_array('EXPECTED', expected)}
static void say(const char *s) {{ semihost(0x04, s); }}
int main(void)
{{
    static float h[GRU_STATE_SIZE];
    float forecast[GRU_HORIZON];
    float worst = 0.0f;
    int t, k;
    gru_reset(h);
    for (t = 0; t < {len(readings)}; ++t) {{
        if (gru_forecast(READINGS[t], h, forecast) != 0) {{ say("refused a reading\\n"); return 1; }}
        for (k = 0; k < GRU_HORIZON; ++k) {{
            float e = fabsf(forecast[k] - EXPECTED[t][k]) / {c_float(scale)};
            if (!(e <= worst)) worst = e;
        }}
    }}
    say(worst <= {c_float(tier)} ? "parity ok\\n" : "parity FAILED\\n");
    return worst <= {c_float(tier)} ? 0 : 1;
}}
"""


def build_target(bundle: str, folder: str, cpu: str, precision: str, readings, expected, scale, tier) -> str:
    """Compile the library and the parity program for `cpu`; returns the ELF path. The parity program
    checks the step itself against `expected`, so it builds without the deadband (GRU_DEADBAND_OFF)."""
    _, flags = TARGETS[cpu]
    lib = os.path.join(folder, "lib")
    write_library(bundle, lib, precision)
    files = {"startup.c": STARTUP, "parity.c": parity_main(readings, expected, scale, tier), "link.ld": LINKER_SCRIPT}
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    elf = os.path.join(folder, f"parity-{cpu}.elf")
    cmd = ["arm-none-eabi-gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-DGRU_DEADBAND_OFF", *flags, "-ffunction-sections",
           "-nostartfiles", "--specs=nosys.specs", "-T", os.path.join(folder, "link.ld"), f"-I{lib}",
           os.path.join(folder, "startup.c"), os.path.join(folder, "parity.c"), os.path.join(lib, "gru_step.c"),
           "-lm", "-o", elf]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"arm-none-eabi-gcc failed for {cpu}: {p.stderr[-1500:]}")
    return elf


def run_target(elf: str, cpu: str, timeout: float = 120) -> tuple[int, str]:
    """(exit code, what the program said) from qemu-system-arm with semihosting."""
    machine, _ = TARGETS[cpu]
    p = subprocess.run(["qemu-system-arm", "-M", machine, "-cpu", cpu, "-nographic", "-monitor", "none",
                        "-serial", "none", "-semihosting-config", "enable=on,target=native", "-kernel", elf],
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


COST_MAIN = r"""#include "gru_step.h"
int semihost(int op, const void *arg);
#define SYST_CSR (*(volatile unsigned long *)0xE000E010UL)
#define SYST_RVR (*(volatile unsigned long *)0xE000E014UL)
#define SYST_CVR (*(volatile unsigned long *)0xE000E018UL)
static char msg[32];
static void say_number(unsigned long v)
{
    char tmp[12];
    int n = 0, i = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) msg[i++] = tmp[--n];
    msg[i++] = '\n';
    msg[i] = 0;
    semihost(0x04, msg);
}
int main(void)
{
    static float h[GRU_STATE_SIZE];
    float reading[GRU_INPUTS] = {0}, forecast[GRU_HORIZON];
    unsigned long t0, t1;
    int t;
    gru_forecast(reading, h, forecast);                  /* warm */
    SYST_RVR = 0xFFFFFFUL; SYST_CVR = 0; SYST_CSR = 5;     /* processor clock, no interrupt */
    t0 = SYST_CVR;
    for (t = 0; t < STEPS; ++t) gru_forecast(reading, h, forecast);
    t1 = SYST_CVR;
    say_number((t0 - t1) & 0xFFFFFFUL);
    return 0;
}
"""
# QEMU's mps2 boards clock SysTick at 25 MHz; with -icount shift=0 every guest instruction takes
# 1 ns of virtual time, so one SysTick tick is 40 instructions.
INSNS_PER_TICK = 40
COST_STEPS = 20


def _compile(folder: str, cpu: str, sources: list, out: str, extra=()) -> None:
    _, flags = TARGETS[cpu]
    cmd = ["arm-none-eabi-gcc", "-std=c99", "-O2", *flags, "-ffunction-sections", *extra, "-nostartfiles",
           "--specs=nosys.specs", "-T", os.path.join(folder, "link.ld"), f"-I{os.path.join(folder, 'lib')}",
           *sources, "-lm", "-o", out]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"arm-none-eabi-gcc failed for {cpu}: {p.stderr[-1500:]}")


def library_size(folder: str, cpu: str) -> dict:
    """Flash (text + rodata + data) and static RAM of gru_step.o, and the stack bound from -fstack-usage."""
    _, flags = TARGETS[cpu]
    obj = os.path.join(folder, f"gru_step-{cpu}.o")
    subprocess.run(["arm-none-eabi-gcc", "-std=c99", "-O2", *flags, "-fstack-usage", "-c",
                    os.path.join(folder, "lib", "gru_step.c"), "-o", obj], check=True, capture_output=True)
    sizes = {}
    for line in subprocess.run(["arm-none-eabi-size", "-A", obj], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            kind = parts[0].split(".")[1]
            sizes[kind] = sizes.get(kind, 0) + int(parts[1])
    with open(obj[:-2] + ".su") as f:
        frames = [int(line.split()[-2]) for line in f if line.strip()]
    flash = sizes.get("text", 0) + sizes.get("rodata", 0) + sizes.get("data", 0)
    return {"flash_bytes": flash, "static_ram_bytes": sizes.get("data", 0) + sizes.get("bss", 0),
            "stack_bytes_bound": sum(frames)}


def instructions_per_step(folder: str, cpu: str) -> float:
    """Guest instructions per gru_forecast call, counted by QEMU (-icount shift=0) via SysTick."""
    with open(os.path.join(folder, "cost.c"), "w") as f:
        f.write(COST_MAIN)
    elf = os.path.join(folder, f"cost-{cpu}.elf")
    _compile(folder, cpu, [os.path.join(folder, "startup.c"), os.path.join(folder, "cost.c"),
                           os.path.join(folder, "lib", "gru_step.c")], elf, [f"-DSTEPS={COST_STEPS}"])
    machine, _ = TARGETS[cpu]
    p = subprocess.run(["qemu-system-arm", "-M", machine, "-cpu", cpu, "-nographic", "-monitor", "none", "-serial", "none",
                        "-icount", "shift=0", "-semihosting-config", "enable=on,target=native", "-kernel", elf],
                       capture_output=True, text=True, timeout=120)
    ticks = int((p.stdout + p.stderr).strip().splitlines()[-1])
    return ticks * INSNS_PER_TICK / COST_STEPS


APP_MAIN = r"""#include "gru_step.h"
float reading[GRU_INPUTS];          /* filled by the firmware's sensor code */
float forecast[GRU_HORIZON];
int main(void)
{
    static float h[GRU_STATE_SIZE];
    gru_reset(h);
    return gru_forecast(reading, h, forecast);
}
"""
_PUSH = re.compile(r"\b(?:push|stmdb\s+sp!,)\s*\{([^}]*)\}")
_SUB_SP = re.compile(r"\bsub(?:w)?\s+sp,\s*(?:sp,\s*)?#(\d+)")


def _frames_without_su(elf: str, known: set) -> int:
    """Stack bytes of the linked functions -fstack-usage did not see (libc's memcpy, libgcc's float
    helpers): registers pushed and sp lowered in each function's code, summed (a bound)."""
    text = subprocess.run(["arm-none-eabi-objdump", "-d", elf], capture_output=True, text=True, check=True).stdout
    total = 0
    for block in text.split("\n\n"):
        head = re.search(r"<([^>]+)>:\s*$", block.split("\n")[0])
        if not head or head.group(1) in known:
            continue
        total += sum(4 * len(regs.split(",")) for regs in _PUSH.findall(block))
        total += sum(int(n) for n in _SUB_SP.findall(block))
    return total


def program_size(folder: str, cpu: str) -> dict:
    """The whole program on the linked image: startup, a main calling gru_forecast, the library and what
    the linker pulls in (no -lm), with --gc-sections. Flash = text + data; RAM = data + bss + the stack
    bound (every -fstack-usage frame plus each library function's pushes, summed)."""
    _, flags = TARGETS[cpu]
    app, elf = os.path.join(folder, "app.c"), os.path.join(folder, f"app-{cpu}.elf")
    with open(app, "w") as f:
        f.write(APP_MAIN)
    sus = os.path.join(folder, f"su-{cpu}")
    os.makedirs(sus, exist_ok=True)
    cmd = ["arm-none-eabi-gcc", "-std=c99", "-O2", *flags, "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections",
           "-fstack-usage", "-dumpdir", f"{sus}/", "-nostartfiles", "--specs=nosys.specs", "-T", os.path.join(folder, "link.ld"),
           f"-I{os.path.join(folder, 'lib')}", os.path.join(folder, "startup.c"), app,
           os.path.join(folder, "lib", "gru_step.c"), "-o", elf]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"arm-none-eabi-gcc could not link the program for {cpu} without libm: {p.stderr[-1500:]}")
    size = subprocess.run(["arm-none-eabi-size", "-A", elf], capture_output=True, text=True, check=True).stdout
    sec = {ln.split()[0]: int(ln.split()[1]) for ln in size.splitlines() if ln.startswith(".") and ln.split()[1].isdigit()}
    known, stack = set(), 0
    for name in os.listdir(sus):
        with open(os.path.join(sus, name)) as f:
            for line in f:
                if line.strip():
                    known.add(line.split("\t")[0].split(":")[-1])
                    stack += int(line.split()[-2])
    stack += _frames_without_su(elf, known)
    static = sec.get(".data", 0) + sec.get(".bss", 0)
    return {"program_flash_bytes": sec.get(".text", 0) + sec.get(".data", 0), "program_ram_bytes": static + stack,
            "program_stack_bound": stack}


# An anchor, not a measurement: the TFLite Micro interpreter alone, before any model or arena
# (David et al., "TensorFlow Lite Micro: Embedded Machine Learning on TinyML Systems", MLSys 2021,
# table of the core runtime's footprint on a Cortex-M3: about 16 KB of flash).
TFLM_ANCHOR = "TFLite Micro's core runtime alone: about 16 KB of flash on a Cortex-M3 (David et al., MLSys 2021)"
# Cycle estimate basis: the Cortex-M4/M7 issue one instruction per cycle with 2-cycle loads and
# 1-3 cycle FP operations in these dense float loops; 1.3 cycles per instruction is assumed.
CPI_ESTIMATE = 1.3


def host_drift(bundle: str, folder: str, readings, reference) -> float:
    """RMSE/std(y) of the int8 C library vs the float reference over a stream, compiled for the host."""
    lib = os.path.join(folder, "host-int8")
    write_library(bundle, lib, "int8")
    exe = os.path.join(lib, "gru_stream")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(["cc", "-std=c99", "-O2", f"-I{lib}", os.path.join(here, "examples", "mcu", "stream.c"),
                    os.path.join(lib, "gru_step.c"), "-lm", "-o", exe], check=True, capture_output=True)
    text = "\n".join(",".join(c_float(v)[:-1] for v in r) for r in readings) + "\n"
    out = subprocess.run([exe], input=text, capture_output=True, text=True, check=True).stdout.splitlines()
    got = np.array([[float(v) for v in line.split(",")] for line in out])
    return float(np.sqrt(np.mean((got - reference) ** 2)) / np.std(reference))


def measure(bundle: str, folder: str, readings: np.ndarray, reference: np.ndarray) -> dict:
    """Per precision and CPU: flash, RAM, instructions per step, a cycle estimate; int8 drift."""
    import runtime
    md = runtime.read_manifest(bundle)["model"]
    state_bytes = 4 * md["num_layers"] * md["hidden_size"]
    out = {"state_bytes": state_bytes, "tflm_anchor": TFLM_ANCHOR, "cpi_estimate": CPI_ESTIMATE,
           "instructions_counted_by": "qemu-system-arm -icount shift=0 (1 ns per instruction), SysTick at 25 MHz "
                                      "(calibrated: 40 instructions per tick)", "variants": {}}
    for precision in ("fp32", "int8"):
        d = os.path.join(folder, precision)
        write_library(bundle, os.path.join(d, "lib"), precision)
        for name, text in (("startup.c", STARTUP), ("link.ld", LINKER_SCRIPT)):
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        out["variants"][precision] = {cpu: {**library_size(d, cpu), **program_size(d, cpu),
                                            "instructions_per_step": instructions_per_step(d, cpu)} for cpu in TARGETS}
    out["variants"]["int8"]["drift_rmse_over_std"] = host_drift(bundle, folder, readings, reference)
    return out


def measure_bundle(bundle: str, folder: str) -> dict:
    """Measure every variant and CPU in `folder` over 2,000 readings (the golden ones, repeated)."""
    from runtime import load
    from runtime.derived import full_inputs, golden_stream
    from runtime.forecaster import step_rows
    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")):
        raise RuntimeError("measuring needs arm-none-eabi-gcc and qemu-system-arm (apt-get install --no-install-recommends "
                           "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
    fc = load(bundle, engine="numpy")
    raw, times = golden_stream(os.path.join(bundle, fc.manifest["golden"]["file"]))
    readings = np.resize(raw, (2000, raw.shape[1]))
    times = None if times is None else np.resize(times, 2000)
    return measure(bundle, folder, full_inputs(fc.manifest, readings, times), step_rows(fc, readings, times))


def record_report(bundle: str, folder: str) -> dict:
    """`measure_bundle`, recorded in the bundle (manifest `mcu`, REPORT.md) through the one bundle writer."""
    from .writer import BundleWriter
    report = measure_bundle(bundle, folder)
    with BundleWriter(bundle, base=bundle) as w:
        w.manifest["mcu"] = report
    return report


def main(argv=None) -> int:
    """`python -m export.mcu_target BUNDLE --table`: measure (nothing is written into the bundle) and
    print the C library's table as Markdown (the README's)."""
    import argparse
    import sys
    import tempfile
    from runtime.bundle import BundleError
    from .report import mcu_section
    p = argparse.ArgumentParser(prog="python -m export.mcu_target", description=main.__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("--table", action="store_true", help="print the Markdown table (the default and only output)")
    a = p.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join(mcu_section(measure_bundle(a.bundle, tmp))))
    except (BundleError, RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
