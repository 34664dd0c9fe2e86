"""The service's time: the wall clock, but never stepping back.

A Raspberry Pi has no real-time clock: it boots at its last shutdown's time (or 1970), and NTP steps
the wall clock later, by hours or months; `ntpdate` or a hand may step it back. The monotonic clock
tells such a step from time passing. Forward, service time follows the wall clock (the periods in
between were never lived: the service skips them, runtime/service/service.py). Back, it goes on from
where it was, `skew` seconds ahead of the wall clock: no period is lived twice, so no reading of
the next ones is `late` and no capture period repeats; a later forward step takes the skew back first.
"""
from __future__ import annotations

import time

STEP_S = 2.0       # the wall clock moved this much more (or less) than the monotonic clock: a step


class ServiceTime:
    def __init__(self, step_s: float = STEP_S):
        self.step_s, self.skew = step_s, 0.0
        self._last = None               # (service time, monotonic time) of the last call
        self._steps = []                # the wall clock's steps (s, + forward) not yet taken

    def now(self) -> float:
        wall, mono = time.time(), time.monotonic()
        t = wall + self.skew
        if self._last is not None:
            expected = self._last[0] + (mono - self._last[1])
            d = t - expected
            if d < -self.step_s:                   # back: go on from where it was
                self.skew -= d
                self._steps.append((d, "wall"))
            elif d > self.step_s:                  # forward: give the skew back first
                back = min(self.skew, d)
                self.skew -= back
                if back > 0:
                    self._steps.append((back, "caught up"))
                if d - back > self.step_s:
                    self._steps.append((d - back, "wall"))
            t = max(wall + self.skew, self._last[0])      # (a small step back is held, not followed)
        self._last = (t, mono)
        return t

    def restore(self, skew: float) -> None:
        """A restart after a step back: service time goes on `skew` s ahead of the wall clock, as it was
        (the saved open period lies there: restarting at the wall clock's would drop it, acknowledged)."""
        self.skew, self._last = float(skew), None

    def follow(self, offset: float) -> None:
        """Step service time forward by `offset` s: this device's clock is that far behind its sensors'."""
        self.skew += offset
        if self._last is not None:
            self._last = (self._last[0] + offset, self._last[1])
        self._steps.append((offset, "sensors"))

    def stamp(self, wall: float) -> float:
        """A wall time taken by a transport (a reading's arrival) in service time."""
        return wall + self.skew

    def take_steps(self) -> list:
        """[(seconds, why)]: the steps since the last call; why "wall" (service time stepped with the wall
        clock: forward, or back and held), "caught up" (a forward step took back that much skew) or
        "sensors" (`follow`)."""
        steps, self._steps = self._steps, []
        return steps
