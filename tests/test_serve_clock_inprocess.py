"""serve's clock and capture across wall-clock steps, in process with a wall and a monotonic clock the
test moves (a review of the service-time change, 2026-12-07, found each of these; each was watched
failing first): a restart after a step back, a step during a replay, sensors' own times after a step
back, and a capture file replaced by one that is no capture database."""
import json
import os
import sqlite3
import time

import numpy as np
import pytest

from runtime.service.config import merge
from runtime.service.payload import Reading
from runtime.service.service import Service


class Clocks:
    def __init__(self, wall=1.75e9):
        self.wall, self.mono = wall, 1000.0

    def advance(self, s):              # time passes
        self.wall += s
        self.mono += s

    def step(self, s):                 # the wall clock steps; the monotonic one does not
        self.wall += s


@pytest.fixture
def clocks(monkeypatch):
    c = Clocks()
    monkeypatch.setattr(time, "time", lambda: c.wall)
    monkeypatch.setattr(time, "monotonic", lambda: c.mono)
    return c


@pytest.fixture
def make(daphnet_bundle):
    features = [f["name"] for f in json.load(open(os.path.join(daphnet_bundle, "manifest.json")))["features"]]
    with np.load(str(daphnet_bundle) + ".build.npz") as z:
        x = z["inputs"][:200].astype(np.float64)

    def service(state=None, capture=False):
        flags = {"model": {"engine": "numpy", "period_s": 1.0, "streams": 4}, "stdout": {"enabled": True},
                 "stdin": {"enabled": True},
                 "clock": {"grace_s": 0.2}, **({"state": {"dir": str(state)}} if state else {}),
                 **({"capture": {"enabled": True}} if capture else {})}
        cfg = merge({}, flags)
        cfg["stdin"]["enabled"] = cfg["stdout"]["enabled"] = False    # readings go in through accept(), no transport
        return Service(str(daphnet_bundle), cfg)

    def reading(node, i, t=None):
        return Reading(node, dict(zip(features, x[i % len(x)])), t, time.time())
    return service, reading


def _live(svc, clocks, reading, n, start=0, node="a", every=0.5):
    for i in range(start, start + n):
        svc.accept(reading(node, i))
        clocks.advance(every)
        svc.close_ticks(svc.now())


def test_a_restart_after_a_step_back_keeps_the_saved_open_period(clocks, make, tmp_path):
    """The checkpoint at a stop saves the open period (its readings acknowledged); after a step back it
    lay ahead of the restarted wall clock: thrown away (an hour), or every reading late (30 s)."""
    service, reading = make
    for back in (3600.0, 30.0):
        state = tmp_path / f"s{back:.0f}"
        svc = service(state)
        _live(svc, clocks, reading, 10)
        clocks.step(-back)
        svc.now()
        for i in range(10, 13):
            svc.accept(reading("a", i))
            clocks.advance(0.3)
        saved = {p: int(a.seen.sum()) for p, a in svc.clock.pending.items()}
        svc.close()
        clocks.advance(2)
        again = service(state)
        assert saved and {p: int(a.seen.sum()) for p, a in again.clock.pending.items()} == saved, back
        _live(again, clocks, reading, 20, start=13)
        assert again.health.counts["late"] == 0 and again.health.counts["readings"] == 20, back


def test_a_step_of_the_wall_clock_during_a_replay_loses_no_reading(clocks, make):
    """Old timed readings replayed at full speed never close on the wall clock; a step flushed the
    open period before node b had sent (b's reading late, b counted missing)."""
    service, reading = make
    for steps in ([30.0], [-30.0, 30.0]):
        svc, k, old = service(), 0, 1.58e9
        for step in [None] + steps + [None]:
            for i in range(20):
                svc.accept(reading("a", k, t=old + k))
                if step is not None and i == 10:
                    clocks.step(step)
                svc.accept(reading("b", k, t=old + k))
                clocks.advance(0.001)
                k += 1
                svc.close_ticks(svc.now())
        c = svc.health.counts
        assert c["late"] == 0 and c["missing_periods"] == 0 and c["readings"] == 2 * k, (steps, c)


def test_sensors_own_times_after_a_step_back_are_not_late(clocks, make):
    """The device's clock an hour ahead of its sensors (an RTC in local time), then NTP sets it back:
    the clock took raw arrival times for service time, skipped an hour ahead, and every reading was late."""
    service, reading = make
    real = clocks.wall
    clocks.wall = real + 3600
    svc = service()
    for k in range(40):
        if k == 10:
            clocks.step(-3600)
        clocks.advance(1.0)
        svc.close_ticks(svc.now())
        svc.accept(reading("a", k, t=real + k + 1))
    c = svc.health.counts
    assert c["late"] == 0 and c["readings"] == 40, c


def test_a_capture_file_replaced_by_no_capture_database_is_counted_and_checkpoints_go_on(clocks, make, tmp_path):
    service, reading = make
    svc = service(tmp_path, capture=True)
    svc.cfg["state"]["checkpoint_every"] = 5
    _live(svc, clocks, reading, 12, every=1.0)
    db = tmp_path / "capture.db"
    os.replace(db, tmp_path / "capture.db.old")
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 7")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    before = os.stat(tmp_path / "serve-state.npz").st_mtime_ns
    clocks.advance(1.0)
    _live(svc, clocks, reading, 20, start=12, every=1.0)
    assert svc.health.counts["tick_errors"] == 0 and svc.capture.counts["capture_failures"] >= 1
    assert os.stat(tmp_path / "serve-state.npz").st_mtime_ns != before
