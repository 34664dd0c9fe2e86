"""`serve --auto-rollback` (`[shadow] auto_rollback`): back to `previous` when a promoted model's
live score collapses.

`flash promote` records, in `<root>/state/promoted`, the release it promoted, the one it replaced,
that one's live MAE at promotion and the rule's margin. While that release is live, the service
scores it (the interval tracker's scoring, runtime/intervals.py) and, once `retrain_window` periods
are scored, compares their MAE with the recorded one: worse by more than the margin, and it
switches `current` back to `previous` (atomic rename), says so on stderr (the journal) and the
status topic, records it in `state/rolled_back` (`flash status`, `make device-status`), and reloads.
The record is then used up: it rolls back once. A model with no recorded score is never rolled back.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from ..files import atomic_write
from ..forecaster import target_index
from .shadow import scorer

PROMOTED, ROLLED_BACK = "promoted", "rolled_back"


class AutoRollback:
    def __init__(self, root: str, state_dir: str, window: int):
        self.root, self.state_dir, self.window = root, state_dir, window
        self.live_id, self.tracker, self.scored = None, None, 0
        self.failed = False                           # a rollback that could not be made is not retried

    def step(self, fc, truth, y) -> None:
        """Score the live model's forecasts y [B, K] on the target's readings truth [B]."""
        bid = fc.manifest["bundle_id"]
        if bid != self.live_id:                       # a new live model: its own score from zero
            self.live_id = bid
            self.tracker, self.scored = scorer(fc.manifest, fc.streams, target_index(fc.manifest), False, self.window), 0
        self.scored += int(np.isfinite(truth).any())
        self.tracker.update(truth, y)

    def _record(self):
        """(promoted id, replaced id, its MAE, margin) from state/promoted, or None."""
        try:
            with open(os.path.join(self.state_dir, PROMOTED)) as f:
                _, pid, prev, mae, *rest = f.read().split()
            return pid, prev, float(mae), float(rest[0]) if rest else 0.02
        except (OSError, ValueError):
            return None

    def check(self, link=None) -> bool:
        """Roll back when due; True when `current` was switched (the caller reloads)."""
        rec = None if self.failed else self._record()
        if rec is None or self.tracker is None or rec[0] != self.live_id:
            return False
        score = self.tracker.score()
        if self.scored < self.window + self.tracker.horizon or not score["recent_mae"] > rec[2] * (1 + rec[3]):
            return False
        return self._switch(rec, score["recent_mae"], link)

    def _switch(self, rec, mae: float, link) -> bool:
        """Switch `current` back (True: the caller reloads). A device that cannot (no `previous`, a
        read-only or full disk) keeps serving the promoted model: said once, and not tried again."""
        pid, prev, was, margin = rec
        try:
            self._link("current", os.readlink(os.path.join(self.root, "previous")))
        except OSError as e:
            self.failed = True
            print(f"warning: auto-rollback from {pid} to {prev} failed ({e.strerror or e}): {pid} stays live",
                  file=sys.stderr)
            return False
        doc = {"event": "auto-rollback", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from": pid,
               "to": prev, "live_mae": mae, "recorded_mae": was, "margin": margin, "window": self.window}
        try:
            self._link("previous", f"releases/{pid}")
            with atomic_write(os.path.join(self.state_dir, ROLLED_BACK), "w") as f:
                f.write(f"{doc['time']} {pid} -> {prev} live_mae={mae:.6g} recorded={was:.6g}\n")
            os.replace(os.path.join(self.state_dir, PROMOTED), os.path.join(self.state_dir, PROMOTED + ".used"))
        except OSError as e:
            self.failed = True
            print(f"warning: auto-rollback: back to {prev}, but its record could not be written ({e.strerror or e})",
                  file=sys.stderr)
        print(f"serve: auto-rollback: {pid}'s live MAE {mae:.4g} over {self.window} periods is worse than "
              f"{prev}'s {was:.4g} at promotion by more than {margin:.0%}: back to {prev}", file=sys.stderr)
        if link is not None:
            link.publish(link.status_topic, json.dumps(doc), qos=1, retain=False)
        return True

    def _link(self, name: str, to: str) -> None:
        """`root/name` → `to`, atomically (a new link renamed over the old)."""
        tmp = os.path.join(self.root, f"{name}.new")
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(to, tmp)
        os.replace(tmp, os.path.join(self.root, name))
