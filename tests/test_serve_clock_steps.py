"""The device's wall clock steps while `serve` runs (a Raspberry Pi has no RTC: it boots at its last
shutdown's time, or 1970, and NTP steps it later; `ntpdate` steps it back). A helper's probe
(2026-12-07) found: a forward step of days made the service tick every skipped period at once (1.5 GB
in 12 s for 10 days at 1 s periods, an OOM kill at 1970 → now), and a step back dropped every reading
as `late` for the step's length."""
import json
import os
import subprocess
import sys
import time

from conftest import ROOT
from test_serve import readings

STEP_S = {"forward ten days": 10 * 86400.0, "back an hour": -3600.0}


def _serve_through_a_step(bundle, tmp_path, step_s: float, before=12, after=12):
    """serve --stdin --stdout at a 0.5 s period, fed untimed readings every 0.25 s; the wall clock
    steps by step_s between them. (returncode, forecasts, stderr, seconds from the step to the end)."""
    offset = tmp_path / "offset"
    offset.write_text("0")
    features, x = readings(bundle, before + after)
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "fakeclock.py"), "serve", str(bundle), "--stdin",
                          "--stdout", "--engine", "numpy", "--period-s", "0.5", "--grace-s", "0.2", "--stats-every", "1"],
                         cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "FAKE_OFFSET_FILE": str(offset)})
    p.stdin.write((",".join(features) + "\n").encode())
    for i, row in enumerate(x):
        if i == before:
            offset.write_text(repr(step_s))
            stepped = time.monotonic()
        p.stdin.write((",".join(repr(float(v)) for v in row) + "\n").encode())
        p.stdin.flush()
        time.sleep(0.25)
    try:
        out, err = p.communicate(timeout=60)            # (closes stdin: the end of the readings)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    took = time.monotonic() - stepped
    return p.returncode, [json.loads(s) for s in out.decode().splitlines()], err.decode(errors="replace"), took


def _stats(err):
    return [json.loads(line[6:]) for line in err.splitlines() if line.startswith("stats ")][-1]


def test_a_forward_step_of_days_neither_hangs_nor_ticks_every_skipped_period(daphnet_bundle, tmp_path):
    rc, got, err, took = _serve_through_a_step(daphnet_bundle, tmp_path, STEP_S["forward ten days"])
    assert rc == 0 and took < 30, (rc, took, err[-800:])
    s = _stats(err)
    assert s["readings"] == 24 and s["late"] == 0 and s["ticks"] < 100, s
    assert "the wall clock stepped" in err, err[-800:]
    assert got and max(g["time"] for g in got) > min(g["time"] for g in got)


def test_a_step_back_drops_no_reading(daphnet_bundle, tmp_path):
    rc, got, err, took = _serve_through_a_step(daphnet_bundle, tmp_path, STEP_S["back an hour"])
    s = _stats(err)
    assert rc == 0 and s["readings"] == 24 and s["late"] == 0, (s, err[-800:])
    assert err.count("the wall clock stepped back") == 1, err[-800:]
    assert len(got) >= 12, len(got)


def test_a_device_clock_far_behind_its_sensors_follows_their_time(daphnet_bundle, tmp_path):
    """A device whose clock came back 200 days behind (no RTC, no NTP on its network) dropped every timed
    reading as `future`, for as long as its clock stayed wrong. With no on-time reading for the clock's
    stall time and its sensors agreeing, service time now follows their times (said once)."""
    offset = tmp_path / "offset"
    offset.write_text(repr(-200 * 86400.0))
    features, x = readings(daphnet_bundle, 40)
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "fakeclock.py"), "serve", str(daphnet_bundle),
                          "--stdin", "--stdout", "--engine", "numpy", "--period-s", "0.5", "--grace-s", "0.2",
                          "--stats-every", "1"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "FAKE_OFFSET_FILE": str(offset)})
    p.stdin.write((",".join(["time"] + features) + "\n").encode())
    for row in x:
        p.stdin.write((",".join([repr(time.time())] + [repr(float(v)) for v in row]) + "\n").encode())
        p.stdin.flush()
        time.sleep(0.25)
    out, err = p.communicate(timeout=60)
    err = err.decode(errors="replace")
    s = _stats(err)
    assert p.returncode == 0 and s["future"] < 30 and s["readings"] >= 10 and len(out.splitlines()) >= 8, (s, err[-800:])
    assert err.count("behind its sensors") == 1, err[-800:]
