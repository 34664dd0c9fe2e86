"""The service's side of its time (runtime/service/walltime.py): the wall clock's steps, said, counted
and taken (forward: the periods stepped over are skipped; back: service time goes on), a device clock
far behind its sensors' times, and why a reading was dropped. Functions of the running Service, as
reload.py's are."""
from __future__ import annotations

import numpy as np


def stepped(svc, step: float, why: str, now: float) -> None:
    """Forward: close what is pending and go on from now's period (the periods stepped over were never
    lived: not missing, and every stream keeps its state). Back: service time goes on (walltime.py)."""
    svc.health.count("clock_steps")
    if why == "caught up":
        svc.health.warn("step", f"the wall clock stepped forward {step:.0f} s: serve's time, ahead of it since "
                        "a step back, is the wall clock's again")
        return
    svc.close_ticks(now)                 # (a replay's periods do not close on the wall clock: untouched)
    skipped = svc.clock.skip_to(now, 0) if step > 0 else 0
    if why == "sensors":
        svc._replay_held()
        svc.health.warn("step", f"this device's clock is {step:.0f} s behind its sensors' times (no real-time clock, "
                        "no NTP?): serve keeps their time from now on, and a later NTP step takes it back")
        return
    if step > 0:
        what = f"{skipped} period(s) stepped over, not forecast; every stream keeps its state"
    else:
        what = (f"serve's periods go on from where they were, {svc.time.skew:.0f} s ahead of it (across restarts "
                "too) until a forward step takes that back")
    svc.health.warn("step", f"the wall clock stepped {'forward' if step > 0 else 'back'} {abs(step):.0f} s "
                    f"(NTP setting a device without a real-time clock?): {what}")


def behind_sensors(svc, slot: int, t: float, now: float, reading: tuple) -> bool:
    """This device's clock is behind its sensors' when no on-time reading came for the clock's stall
    time (since the service started, too) and the `future` readings agree (within a period, or 2 s)
    from two nodes or more, or from the only node it has (a lone node does not move the clock for the
    others): service time then follows theirs. True when it did; the readings held until then (each
    node's latest) are replayed."""
    svc._future[slot] = (t - now, reading, now)
    if now - max(svc.clock.last_ok, svc._started) <= svc.clock.stall_s:     # (others may yet come on time)
        return False
    recent = {s: f for s, f in svc._future.items() if now - f[2] <= svc.clock.stall_s}
    offsets = [f[0] for f in recent.values()]
    if len(offsets) < min(2, len(svc.slots)) or max(offsets) - min(offsets) > max(svc.clock.period_s, 2.0):
        return False
    svc._held.update((s, f[1]) for s, f in recent.items())
    svc._future = {}
    svc.time.follow(float(np.median(offsets)))
    return True


def why_dropped(svc, verdict: str, t: float, now: float) -> str:
    """The warning's reason for a late or future reading."""
    if verdict == "future":      # every node's readings this far ahead: this device's clock is behind
        return (f"time {t:.0f}, {t - now:.0f} s ahead of this device's clock, beyond max_future_s "
                f"{svc.clock.max_future_s:g}: is the device's clock set (NTP, a real-time clock)?")
    return f"time {t:.0f}, the open period starts {svc.clock.time_of(svc.clock.open):.0f}"
