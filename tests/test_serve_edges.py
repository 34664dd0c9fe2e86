"""Hostile input at the service's edge without a broker: stdin and a real pseudo-terminal (socat),
a full and a read-only state dir (a real tmpfs, mounted in a private namespace), units and node
ids that were once format strings or formulas. Each test is a case of the service-hardening audit."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, copy_bundle, reseal, run_module
from test_serve import REL, T0, atol_of, period_of, readings, stream_forecasts, values


def serve_stdin(bundle, lines, *extra, timeout=60):
    """`serve --stdin --stdout` over the given text; (returncode, forecasts as dicts, stderr)."""
    p = subprocess.run([sys.executable, "-m", "runtime", "serve", str(bundle), "--stdin", "--stdout", "--engine",
                        "numpy", *extra], cwd=ROOT, input=lines, capture_output=True, timeout=timeout)
    err = p.stderr.decode(errors="replace")
    return p.returncode, [json.loads(x) for x in p.stdout.decode().splitlines()], err


def csv_text(features, x, period, start=0, header=True, node=None):
    rows = [(["node"] if node else []) + ["time"] + features] if header else []
    rows += [([node] if node else []) + [T0 + (start + i) * period] + [repr(float(v)) for v in r] for i, r in enumerate(x)]
    return "".join(",".join(map(str, r)) + "\n" for r in rows)


def last_stats(err):
    docs = [json.loads(line[6:]) for line in err.splitlines() if line.startswith("stats ")]
    return docs[-1]


# -- case 4: a bare CR or NUL inside a line ------------------------------------------------------
def test_a_bare_cr_or_nul_in_a_line_is_one_malformed_line(daphnet_bundle, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 30)
    lines = csv_text(features, x, period).splitlines(keepends=True)
    bad = lines[:10] + ["1,2\r3,4\n", "5\x006\n"] + lines[10:]
    rc, got, err = serve_stdin(daphnet_bundle, "".join(bad).encode())
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert len(got) == len(x) and last_stats(err)["malformed"] == 2
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"          # stream: skipped and counted, not stopped
    src.write_bytes("".join(bad).encode())
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(src), "--output", str(out), "--engine", "numpy")
    assert json.loads(p.stderr.strip().splitlines()[-1])["skipped_lines"] == 2
    assert sum(1 for _ in open(out)) == len(x) + 1


# -- cases 1 and 2 over serial JSON lines, cases 18 and 19: a real pty --------------------------
class Pty:
    """A socat pseudo-terminal pair: serve reads `a`, the test writes `b`."""

    def __init__(self, tmp_path):
        if not shutil.which("socat"):
            pytest.fail("socat is not installed (make test / .ci/run install it with apt-get)")
        self.a, self.b = tmp_path / "ttyA", tmp_path / "ttyB"
        self.proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"])
        end = time.monotonic() + 5
        while not (self.a.exists() and self.b.exists()) and time.monotonic() < end:
            time.sleep(0.05)

    def write(self, text, timeout=20):
        """Write it all, or fail when nobody reads the other end for `timeout` s (serve died)."""
        data, end = text.encode(), time.monotonic() + timeout
        fd = os.open(self.b, os.O_WRONLY | os.O_NONBLOCK)
        try:
            while data:
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:
                    if time.monotonic() > end:
                        raise AssertionError("serve stopped reading the serial port") from None
                    time.sleep(0.01)
        finally:
            os.close(fd)

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def serve_serial(bundle, port, out, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", str(bundle), "--serial", str(port), "--csv",
                             str(out), "--engine", "numpy", "--grace-s", "0.3", "--stats-every", "0.5", *extra],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    err = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    end = time.monotonic() + 60
    while not any(": open" in ln for ln in err) and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    return proc, err


def wait_rows(out, n, timeout=30):
    end = time.monotonic() + timeout
    while (not out.exists() or sum(1 for _ in open(out)) < n + 1) and time.monotonic() < end:
        time.sleep(0.1)
    return list(csv.reader(open(out)))[1:] if out.exists() else []


def stop(proc, err):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    time.sleep(0.1)
    return proc.returncode, "".join(err)


def test_serial_nested_json_and_giant_numbers_are_malformed_lines(daphnet_bundle, tmp_path):
    """Cases 1 and 2 over serial: 5,000 '[', a 54 KB nested object, 400-digit numbers as a value
    and a time, a time of -1e12: each one counted malformed line; every good line forecast."""
    pytest.importorskip("serial")
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 20)
    pty, out = Pty(tmp_path), tmp_path / "f.csv"
    proc, err = serve_serial(daphnet_bundle, pty.a, out, "--serial-format", "json")
    try:
        good = [json.dumps({"time": T0 + i * period, **dict(zip(features, map(float, r)))}) for i, r in enumerate(x)]
        hostile = ["[" * 5000, '{"a":' * 9000 + "1" + "}" * 9000, '{"%s": %s}' % (features[0], "9" * 400),
                   '{"time": %s, "%s": 1}' % ("9" * 400, features[0]), '{"time": -1e12, "%s": 1}' % features[0]]
        pty.write("\n".join(good[:10] + hostile + good[10:]) + "\n")
        rows = wait_rows(out, len(x) - 1)
        time.sleep(0.8)
        rc, text = stop(proc, err)
    finally:
        pty.close()
    assert rc == 0 and "Traceback" not in text and "recursion" not in text, text[-3000:]
    assert len(rows) >= len(x) - 1
    assert last_stats(text)["malformed"] == len(hostile)


def test_serial_header_resent_remaps_and_survives_a_reconnect(daphnet_bundle, tmp_path):
    """Case 18: a header re-sent mid-stream with two columns swapped re-maps them (the forecasts
    are the unswapped stream's); case 19: after the port reopens, rows go on under the last header."""
    pytest.importorskip("serial")
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 60)
    want = stream_forecasts(daphnet_bundle, features, x, period, tmp_path)
    swapped = [features[1], features[0]] + features[2:]
    x_sw = x[:, [1, 0] + list(range(2, len(features)))]
    first = csv_text(features, x[:20], period)
    second = csv_text(swapped, x_sw[20:40], period, start=20)           # a header, then swapped rows
    third = csv_text(swapped, x_sw[40:], period, start=40, header=False)  # after a reconnect: no header
    pty, out = Pty(tmp_path), tmp_path / "f.csv"
    proc, err = serve_serial(daphnet_bundle, pty.a, out)
    try:
        pty.write(first + second)
        wait_rows(out, 39)
        pty.close()                                   # the adapter is unplugged ...
        time.sleep(1.0)
        pty = Pty(tmp_path)                           # ... and plugged in again, with the same link names
        end = time.monotonic() + 30
        while sum(": open" in ln for ln in err) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        pty.write(third)
        rows = wait_rows(out, len(x) - 1)
        rc, text = stop(proc, err)
    finally:
        pty.close()
    assert rc == 0, text[-3000:]
    got = np.array([[float(v) for v in r[3:]] for r in rows])
    assert len(got) >= len(x) - 1, text[-3000:]
    np.testing.assert_allclose(got[:len(x) - 1], want[:len(x) - 1], rtol=REL, atol=atol_of(daphnet_bundle))


# -- case 3: a unit with % ----------------------------------------------------------------------
def test_a_percent_unit_serves(daphnet_bundle, tmp_path):
    b = copy_bundle(daphnet_bundle, tmp_path / "rh")
    m = json.load(open(os.path.join(b, "manifest.json")))
    m["targets"][0]["unit"] = "%RH %s %d"
    reseal(b, m)
    period = period_of(b)
    features, x = readings(b, 10)
    rc, got, err = serve_stdin(b, csv_text(features, x, period).encode())
    assert rc == 0 and len(got) == len(x), err[-2000:]
    assert got[0]["unit"] == "%RH %s %d"


# -- case 17: formula injection through a node id ------------------------------------------------
def test_a_formula_node_id_is_escaped_in_the_csv_but_numbers_are_not(daphnet_bundle, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 5)
    out = tmp_path / "f.csv"
    text = csv_text(features, x, period, node="=1-2") + "".join(
        line + "\n" for line in csv_text(features, x, period, node="-5").splitlines()[1:])
    p = subprocess.run([sys.executable, "-m", "runtime", "serve", daphnet_bundle, "--stdin", "--csv", str(out),
                        "--engine", "numpy", "--streams", "2"], cwd=ROOT, input=text.encode(), capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    rows = list(csv.reader(open(out)))[1:]
    nodes = {r[0] for r in rows}
    assert nodes == {"'=1-2", "-5"}                    # text escaped; a number stays a number
    assert all(float(v) == float(v) for r in rows for v in r[3:] if v)


# -- case 5: a full or read-only state dir -------------------------------------------------------
def _private_mount(setup: str, serve_args: list, stdin: bytes):
    """Run serve in a private mount namespace after `setup` (shell) made its state dir a tmpfs."""
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is needed to mount a private tmpfs")
    cmd = f"{setup} && exec {sys.executable} -m runtime serve " + " ".join(map(str, serve_args))
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd], cwd=ROOT, input=stdin, capture_output=True, timeout=120)


def test_a_full_state_disk_costs_checkpoints_not_forecasts(daphnet_bundle, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 200)
    state = tmp_path / "state"
    state.mkdir()
    fill = f"mount -t tmpfs -o size=16k tmpfs {state} && head -c 12288 /dev/zero > {state}/filler"
    p = _private_mount(fill, [daphnet_bundle, "--stdin", "--stdout", "--engine", "numpy", "--state-dir", state,
                              "--checkpoint-every", "20"], csv_text(features, x, period).encode())
    err = p.stderr.decode()
    if p.returncode != 0 and "mount" in err and "permission" in err.lower():
        pytest.fail(f"cannot mount a tmpfs here: {err[-300:]}")
    assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert len(p.stdout.decode().splitlines()) == len(x)
    stats = last_stats(err)
    assert stats["checkpoint_failures"] >= 10 and stats["forecasts"] == len(x)
    assert err.count("could not save the state") <= 6                  # warned about, rate-limited


def test_a_read_only_state_dir_with_a_corrupt_state_starts_from_zero(daphnet_bundle, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 50)
    want = stream_forecasts(daphnet_bundle, features, x, period, tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    setup = (f"mount -t tmpfs -o size=64k tmpfs {state} && printf 'PK\\003\\004 garbage' > {state}/serve-state.npz"
             f" && mount -o remount,ro {state}")
    p = _private_mount(setup, [daphnet_bundle, "--stdin", "--stdout", "--engine", "numpy", "--state-dir", state],
                       csv_text(features, x, period).encode())
    err = p.stderr.decode()
    assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "started from a zero state" in err and last_stats(err)["checkpoint_failures"] >= 1
    got = [json.loads(line) for line in p.stdout.decode().splitlines()]
    np.testing.assert_allclose(values(got), want, rtol=REL, atol=atol_of(daphnet_bundle))


# -- case 13: a saved open period far in the future ---------------------------------------------
def test_a_state_file_from_the_future_does_not_make_every_reading_late(daphnet_bundle, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 40)
    state = tmp_path / "state"
    rc, _, err = serve_stdin(daphnet_bundle, csv_text(features, x[:20], period).encode(), "--state-dir", str(state))
    assert rc == 0, err
    path = state / "serve-state.npz"
    with np.load(path) as z:
        saved = {k: z[k] for k in z.files}
    meta = json.loads(str(saved["meta"]))
    meta["open"] = int(4e12 / period)                                 # the year 2096
    meta.pop("clock", None)
    saved["meta"] = np.str_(json.dumps(meta))
    np.savez(path, **saved)
    rc, got, err = serve_stdin(daphnet_bundle, csv_text(features, x[20:], period, start=20).encode(),
                               "--state-dir", str(state))
    assert rc == 0 and "ahead of the wall clock" in err, err[-2000:]
    assert len(got) == 20 and last_stats(err)["late"] == 0


# -- case 9: millisecond epochs in stream --------------------------------------------------------
def test_stream_reads_millisecond_epochs_like_seconds(calendar_bundle, tmp_path):
    m = json.load(open(os.path.join(calendar_bundle, "manifest.json")))
    features = [f["name"] for f in m["features"]]
    with np.load(str(calendar_bundle) + ".build.npz") as z:
        x = z["inputs"][:48, :len(features)].astype(np.float64)
    outs = []
    for scale in (1, 1000):
        src, out = tmp_path / f"in{scale}.csv", tmp_path / f"out{scale}.csv"
        with open(src, "w") as f:
            f.write(",".join(["time"] + features) + "\n")
            for i, r in enumerate(x):
                f.write(",".join([str((1_704_067_200 + 3600 * i) * scale)] + [repr(float(v)) for v in r]) + "\n")
        run_module("runtime", "stream", calendar_bundle, "--input", str(src), "--output", str(out), "--engine", "numpy")
        outs.append(open(out).read().splitlines()[1:])
    a = np.array([[float(v) for v in r.split(",")[1:]] for r in outs[0]])
    b = np.array([[float(v) for v in r.split(",")[1:]] for r in outs[1]])
    np.testing.assert_array_equal(a, b)


# -- case 10 and one time rule: serve and stream read naive times alike ---------------------------
@pytest.mark.parametrize("clock", [{"timezone": "Europe/Paris"}, {"utc_offset_s": 3600.0}])
def test_naive_times_give_serve_and_stream_the_same_forecasts(calendar_bundle, tmp_path, clock):
    """36 naive local times every 10 minutes across the Paris fall-back (02:00-02:59 twice): serve
    takes every one (the repeated hour resolved by arrival order) and forecasts what stream does;
    with a fixed UTC offset of an hour, too (naive times were read as UTC by serve and on the
    bundle's clock by stream)."""
    b = copy_bundle(calendar_bundle, tmp_path / "b")
    m = json.load(open(os.path.join(b, "manifest.json")))
    m["derived_inputs"] = {**{k: v for k, v in m["derived_inputs"].items() if k != "utc_offset_s"}, **clock}
    m["model"].pop("base", None)                  # a level model: the formats 4 and 5 this checks
    m["format_version"] = 5 if "timezone" in clock else 4
    m["sample_period_s"] = 600.0
    reseal(b, m)
    features = [f["name"] for f in m["features"]]
    with np.load(str(b) + ".build.npz") as z:
        x = z["inputs"][:36, :len(features)].astype(np.float64)
    local = ["2026-10-25T00:00:00", "2026-10-25T00:10:00"]
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo
    start = datetime(2026, 10, 24, 22, 0, tzinfo=timezone.utc)      # 00:00 CEST
    zone = ZoneInfo("Europe/Paris") if "timezone" in clock else timezone(timedelta(hours=1))
    local = [(start + timedelta(minutes=10 * i)).astimezone(zone).replace(tzinfo=None).isoformat() for i in range(36)]
    assert len(set(local)) == (30 if "timezone" in clock else 36)  # the repeated hour: six names twice
    text = "time," + ",".join(features) + "\n" + "".join(
        t + "," + ",".join(repr(float(v)) for v in r) + "\n" for t, r in zip(local, x))
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(text)
    run_module("runtime", "stream", b, "--input", str(src), "--output", str(out), "--engine", "numpy")
    want = np.array([[float(v) for v in row.split(",")[1:]] for row in open(out).read().splitlines()[1:]])
    rc, got, err = serve_stdin(b, text.encode())
    assert rc == 0, err[-2000:]
    stats = last_stats(err)
    assert stats["late"] == 0 and len(got) == 36, err[-1500:]
    np.testing.assert_allclose(values(got), want, rtol=REL, atol=atol_of(b))


def test_sigterm_while_stdin_is_still_open_exits_cleanly(daphnet_bundle, tmp_path):
    """serve with a stdin source that has not ended (a pipe from a logger): SIGTERM aborted the
    interpreter at shutdown (rc 134, 'could not acquire lock for <stdin>') after saving."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 40)
    out = tmp_path / "out.csv"
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", str(daphnet_bundle), "--stdin", "--csv", str(out),
                             "--engine", "numpy", "--grace-s", "0.3"], cwd=ROOT, stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    err = []
    threading.Thread(target=lambda: err.extend(ln.decode(errors="replace") for ln in proc.stderr), daemon=True).start()
    proc.stdin.write(csv_text(features, x, period).encode())
    proc.stdin.flush()
    rows = wait_rows(out, len(x) - 1)
    rc, text = stop(proc, err)
    proc.stdin.close()
    assert len(rows) >= len(x) - 1
    assert rc == 0 and "Fatal Python error" not in text, text[-2000:]


def test_a_node_id_with_an_mqtt_wildcard_is_malformed_and_the_others_are_forecast(daphnet_bundle):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 6)
    lines = csv_text(features, x[:1], period, node="a")
    for node in ("x+y", "b#", "b"):
        lines += csv_text(features, x[:1], period, header=False, node=node)
    rc, got, err = serve_stdin(daphnet_bundle, lines.encode())
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert sorted(g["node"] for g in got) == ["a", "b"]
    stats = last_stats(err)
    assert stats["malformed"] == 2 and stats["refused_readings"] == 0


def test_a_value_beyond_float32_is_missing_without_a_warning(daphnet_bundle, tmp_path):
    """1e308 is a float64 but no float32: the cast into the engine's buffer printed numpy's
    'overflow encountered in cast' on stderr in serve and stream alike."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 12)
    text = csv_text(features, x, period).splitlines(keepends=True)
    text[5] = ",".join(text[5].split(",")[:-1] + ["1e308\n"])
    rc, got, err = serve_stdin(daphnet_bundle, "".join(text).encode())
    assert rc == 0 and "Warning" not in err and len(got) == len(x), err[-2000:]
    assert last_stats(err)["imputed_cells"] == 1
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("".join(text))
    p = run_module("runtime", "stream", daphnet_bundle, "--input", str(src), "--output", str(out), "--engine", "numpy")
    assert "Warning" not in p.stderr, p.stderr[-2000:]


def test_a_value_numpy_overflows_on_is_imputed_without_a_warning(daphnet_bundle, tmp_path):
    """3e38 fits float32, but over a spread below 1 its normalized value overflows to inf: the input
    policy imputes it; numpy's 'overflow encountered in multiply' reached stderr."""
    m = json.load(open(os.path.join(daphnet_bundle, "manifest.json")))
    bundle = copy_bundle(daphnet_bundle, tmp_path / "b")
    m["scaler"]["inputs"]["scale"][0] = 0.5
    reseal(bundle, m)
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 12)
    text = csv_text(features, x, period).splitlines(keepends=True)
    cells = text[5].split(",")
    text[5] = ",".join(cells[:1] + ["3e38"] + cells[2:])
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("".join(text))
    p = run_module("runtime", "stream", bundle, "--input", str(src), "--output", str(out), "--engine", "numpy")
    assert "Warning" not in p.stderr and sum(1 for _ in open(out)) == len(x) + 1, p.stderr[-2000:]


# -- a hostile probe's cases (2026-12-08) -----------------------------------------------------------
def paced_serve(bundle, features, x, sends, end, *flags):
    """serve --stdin at 0.5 s periods, fed in real time: row i of x at period i, by each (node, at,
    ahead) of sends(i) `at` s into the period and stamped `ahead` s in the future; the end at `end` s.
    (returncode, stdout, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "runtime", "serve", bundle, "--stdin", "--stdout", "--engine", "numpy",
                          "--period-s", "0.5", "--grace-s", "0.1", *flags], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdin.write(",".join(["node", "time", *features]) + "\n")
    start = float(int(time.time()) + 1)
    for i, row in enumerate(x):
        for node, at, ahead in sends(i):
            time.sleep(max(0.0, start + 0.5 * i + at - time.time()))
            p.stdin.write(",".join([node, repr(time.time() + ahead), *map(repr, map(float, row))]) + "\n")
            p.stdin.flush()
    time.sleep(max(0.0, start + end - time.time()))
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err


def test_an_idle_slot_with_a_reading_in_the_open_period_is_not_taken(daphnet_bundle, tmp_path):
    """--slot-idle-s below the period: node b took node a's slot while a's acknowledged reading was
    still in the open period, and dropped it (20 readings, 1 forecast, 19 expired slots)."""
    features, x = readings(daphnet_bundle, 12)
    rc, out, err = paced_serve(daphnet_bundle, features, x[:8], lambda i: (("a", 0.03, 0.0), ("b", 0.23, 0.0)), 4.75,
                               "--streams", "1", "--slot-idle-s", "0.1")       # a early in each period, b late in it
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    stats = last_stats(err)
    assert stats["forecasts"] == len(out.splitlines()) and stats["forecasts"] >= 7, (stats, out)
    assert stats["refused_readings"] >= 7 and stats["forecasts"] + stats["refused_readings"] >= 15, stats
    assert {json.loads(line)["node"] for line in out.splitlines()} == {"a"}


def test_a_reload_onto_the_same_bundle_keeps_every_streams_state(daphnet_bundle, tmp_path):
    """`current` switched to another copy of the same bundle (a re-flash to another folder): every
    stream started from zero ("another model") at each SIGHUP. Its forecasts now equal a run without it."""
    features, x = readings(daphnet_bundle, 60)
    period = period_of(daphnet_bundle)
    root = tmp_path / "root"
    for name in ("a", "b"):
        shutil.copytree(daphnet_bundle, root / "releases" / name)
    os.symlink("releases/a", root / "current")
    lines = csv_text(features, x, period).splitlines(keepends=True)
    p = subprocess.Popen([sys.executable, "-m", "runtime", "serve", str(root / "current"), "--stdin", "--stdout",
                          "--engine", "numpy"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdin.write("".join(lines[:31]))
    p.stdin.flush()
    got = [p.stdout.readline() for _ in range(29)]          # (the 30th reading's period is still open)
    os.symlink("releases/b", root / "current.new")
    os.replace(root / "current.new", root / "current")
    p.send_signal(signal.SIGHUP)
    err = []
    while not any("reload:" in line for line in err):
        err.append(p.stderr.readline())
        assert err[-1], "".join(err)[-2000:]
    p.stdin.write("".join(lines[31:]))
    out, rest = p.communicate(timeout=60)
    assert p.returncode == 0, rest[-2000:]
    assert "the same bundle: every stream keeps its state" in "".join(err), "".join(err)
    rc, want, _ = serve_stdin(daphnet_bundle, "".join(lines).encode())
    assert [json.loads(line) for line in got + out.splitlines()] == want


def test_a_silent_node_whose_last_reading_was_ahead_gives_its_slot_up(daphnet_bundle, tmp_path):
    """A review's case: a reading held `ahead` (counted as dropped) kept a node that then fell silent
    in its slot for good; only readings in an open period keep one."""
    features, x = readings(daphnet_bundle, 12)

    def sends(i):                                           # (45 s: past max_gap_ticks 30 of 0.5 s periods)
        return ([("c", 0.03, 0.0)] + ([("a", 0.05, 0.0)] if i < 3 else [("a", 0.05, 45.0)] if i == 3 else [])
                + ([("b", 0.15, 0.0)] if i >= 6 else []))
    rc, out, err = paced_serve(daphnet_bundle, features, x[:10], sends, 5.75, "--streams", "2", "--slot-idle-s", "0.6")
    stats = last_stats(err)
    assert rc == 0 and stats["expired_slots"] == 1 and stats["refused_readings"] == 0, (stats, err[-1500:])
    assert sum(json.loads(line)["node"] == "b" for line in out.splitlines()) >= 3
