"""Node ids → the forecaster's streams ("slots"), so that no sender can take them from the rest.

- An id is 1-128 printable characters without an MQTT wildcard (+, #); anything else is malformed.
- An allowlist (`[model] nodes = ["kitchen", "garage"]`, exact ids, and/or `nodes_regex`, matched
  against the whole id) refuses every other node. Without one, any id may take a free slot:
  5,000 junk ids would take them all, so set an allowlist wherever the broker is shared.
- A slot idle for `slot_idle_s` (wall seconds since its last reading) is freed when a new node
  needs it, and is not restored from a checkpoint once expired.
"""
from __future__ import annotations

import math
import re

import numpy as np

MAX_NODE_ID = 128


class Refused(Exception):
    """A node that gets no slot; the text says why."""


class NotANode(Refused):
    """An id that is no node id at all: counted as malformed, not as a refused reading."""


NOT_IN_AN_ID = "+#"         # MQTT's wildcards: no topic can be published with them, so no node is named so


def check_node_id(node: str) -> None:
    """Raises NotANode for an id that is no node id: empty, too long, not printable, an MQTT wildcard in it."""
    if not node or len(node) > MAX_NODE_ID or not node.isprintable() or any(c in node for c in NOT_IN_AN_ID):
        raise NotANode(f"node id {node[:40]!r}: expected 1-{MAX_NODE_ID} printable characters, "
                       f"none of {' '.join(NOT_IN_AN_ID)} (MQTT wildcards)")


class Slots:
    def __init__(self, streams: int, nodes=None, nodes_regex: str | None = None, idle_s: float | None = None):
        self.streams, self.idle_s = streams, idle_s
        self.allowlist = set(nodes) if nodes else None
        self.regex = re.compile(nodes_regex) if nodes_regex else None
        self.by_node = {}                            # node → slot
        self.names = [None] * streams                # slot → node
        self.seen = np.full(streams, -math.inf)      # slot → wall time of its last reading

    def __len__(self) -> int:
        return len(self.by_node)

    def get(self, node: str):
        return self.by_node.get(node)

    def allowed(self, node: str) -> bool:
        if self.allowlist is None and self.regex is None:
            return True
        return (self.allowlist is not None and node in self.allowlist) or \
            (self.regex is not None and self.regex.fullmatch(node) is not None)

    def check_id(self, node: str) -> None:
        """Raises NotANode for an id that is no node id (check_node_id), Refused for one not allowed."""
        check_node_id(node)
        if not self.allowed(node):
            raise Refused(f"node {node[:40]!r} is not in the allowlist ([model] nodes / nodes_regex)")

    def assign(self, node: str, now: float, busy=lambda slot: False) -> tuple:
        """(slot, the node whose idle slot it was or None) for a new, checked node. `busy(slot)`: the
        slot has a reading in a period not yet closed (acknowledged: its slot is not taken from it).

        Raises:
            Refused: every slot is taken by a node that was heard within slot_idle_s, or whose
            reading is still in an open period.
        """
        free = next((s for s, n in enumerate(self.names) if n is None), None)
        expired = None
        if free is None and self.idle_s is not None:
            idle = np.flatnonzero(now - self.seen > self.idle_s)        # (a junk node's every reading comes here)
            oldest = next((int(s) for s in idle[np.argsort(self.seen[idle], kind="stable")] if not busy(int(s))), None)
            if oldest is not None:
                free, expired = oldest, self.release(oldest)
        if free is None:
            raise Refused(f"node {node[:40]!r} refused: all {self.streams} streams are taken (--streams)"
                          + ("" if self.idle_s is None else f" and none idle for {self.idle_s:g} s with its "
                             "readings closed"))
        self.by_node[node], self.names[free], self.seen[free] = free, node, now
        return free, expired

    def release(self, slot: int) -> str:
        node = self.names[slot]
        del self.by_node[node]
        self.names[slot], self.seen[slot] = None, -math.inf
        return node

    def touch(self, slot: int, now: float) -> None:
        self.seen[slot] = now

    def to_json(self) -> dict:
        return {"nodes": dict(self.by_node), "seen": {n: float(self.seen[s]) for n, s in self.by_node.items()}}

    def restore(self, meta: dict, now: float) -> int:
        """The node map of a checkpoint, less what is malformed, not allowed or expired; returns
        the number of expired or no longer allowed nodes left out."""
        nodes = meta.get("nodes") if isinstance(meta.get("nodes"), dict) else {}
        seen = meta.get("seen") if isinstance(meta.get("seen"), dict) else {}
        ok = {str(n): s for n, s in nodes.items() if isinstance(s, int) and 0 <= s < self.streams}
        if len(set(ok.values())) != len(ok):
            return 0
        dropped = 0
        for node, slot in ok.items():
            when = seen.get(node, now)
            when = float(when) if isinstance(when, (int, float)) and math.isfinite(when) else now
            try:
                self.check_id(node)
            except Refused:
                dropped += 1
                continue
            if self.idle_s is not None and now - when > self.idle_s:
                dropped += 1
                continue
            self.by_node[node], self.names[slot], self.seen[slot] = slot, node, min(when, now)
        return dropped
