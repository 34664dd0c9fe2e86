"""`python -m flash promote DEVICE`: the shadow goes live only when the device's own live score says so.

serve scores the shadow (`flash deploy --shadow`) and the live model on the same live truths and
keeps the comparison in `<root>/state/shadow_score.json` (runtime/service/shadow.py). promote reads
it over the same connection as every flash command and applies the rule:

    every horizon step scored at least `min_scored` times,
    the candidate's MAE at no step worse than the live one's by more than `margin` (default 2%),
    and the candidate's MAE over all steps below the live one's.

When it holds, the device switches `current` to the shadow (`previous` keeps the old release) and
records the live MAE it replaced (state/promoted, for `serve --auto-rollback`). Otherwise nothing
changes, the numbers are printed, and `discard` removes the shadow.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from .deploy import FlashError, parse_facts
from .device import Device

MIN_SCORED = 100
MARGIN = 0.02


@dataclass
class Rule:
    min_scored: int = MIN_SCORED
    margin: float = MARGIN

    def __str__(self) -> str:
        return (f"rule: >= {self.min_scored} periods scored on every step; candidate MAE <= live MAE x "
                f"{1 + self.margin:g} at every step; candidate MAE < live MAE overall; no forecast the candidate failed to give")


def decide(doc: dict, rule: Rule) -> tuple[bool, list[str]]:
    """(promote?, the reasons it does not) for one shadow_score.json."""
    why = []
    n, live, cand = doc["scored"], doc["live_mae"], doc["candidate_mae"]
    if min(n) < rule.min_scored:
        why.append(f"only {min(n)} periods scored at step {n.index(min(n)) + 1} (need {rule.min_scored})")
    worse = [k for k, (a, b) in enumerate(zip(live, cand)) if b > a * (1 + rule.margin)]
    if worse:
        k = worse[0]
        why.append(f"step {k + 1}: candidate MAE {cand[k]:.4g} > live {live[k]:.4g} + {rule.margin:.0%}"
                   + (f" (and {len(worse) - 1} more steps)" if len(worse) > 1 else ""))
    if doc.get("candidate_missing"):
        why.append(f"the candidate gave no forecast {doc['candidate_missing']} times where the live model did "
                   "(a state that went non-finite)")
    lm, cm = doc.get("live_mae_mean"), doc.get("candidate_mae_mean")
    if lm is None or cm is None or not cm < lm:
        why.append(f"overall: candidate MAE {cm if cm is None else f'{cm:.4g}'} is not below live {lm if lm is None else f'{lm:.4g}'}")
    return not why, why


def table(doc: dict) -> str:
    """The comparison per horizon step, as a Markdown table."""
    rows = ["| step | scored | live MAE | candidate MAE | persistence MAE |", "|---|---|---|---|---|"]
    for k, (n, a, b, p) in enumerate(zip(doc["scored"], doc["live_mae"], doc["candidate_mae"],
                                         doc["persistence_mae"])):
        rows.append(f"| {k + 1} | {n} | {a:.4g} | {b:.4g} | {p:.4g} |")
    lm, cm = doc.get("live_mae_mean"), doc.get("candidate_mae_mean")
    rows.append(f"| all | {min(doc['scored'])} | {lm if lm is None else f'{lm:.4g}'} | "
                f"{cm if cm is None else f'{cm:.4g}'} | |")
    return "\n".join(rows)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_score(doc, where: str) -> None:
    """A comparison as serve writes it (runtime/service/shadow.py), else one FlashError line: it comes
    from the device, and its numbers reach the decision, the table and the device's command line."""
    if not isinstance(doc, dict):
        raise FlashError(f"{where} is {type(doc).__name__}, not serve's comparison (an object)")
    steps = [doc.get(k) for k in ("scored", "live_mae", "candidate_mae", "persistence_mae")]
    if not all(isinstance(s, list) and s and len(s) == len(steps[0]) and all(map(_number, s)) for s in steps):
        raise FlashError(f"{where}: scored, live_mae, candidate_mae and persistence_mae must be lists of one finite "
                         "number per horizon step, of one length; serve did not write this")
    bad = [k for k in ("live_mae_mean", "candidate_mae_mean", "candidate_missing")      # (None: nothing scored yet)
           if doc.get(k) is not None and not _number(doc[k])]
    if bad:
        raise FlashError(f"{where}: {bad[0]} is no finite number; serve did not write this")


def shadow_score(dev: Device) -> tuple[str, dict]:
    """(the shadow's bundle id, its comparison) as the device has them now; FlashError when there is none."""
    p = dev.command("shadow-score", timeout=60)
    if p.returncode != 0:
        raise FlashError(f"reading the shadow score on {dev.spec} failed: {p.stderr.strip()[-300:]}")
    facts = parse_facts(p.stdout)
    sh, cur = facts.get("shadow", "none"), facts.get("current", "none")
    if not sh.startswith("releases/"):
        raise FlashError(f"{dev.spec}: no shadow release (flash deploy --shadow first)")
    sid, cid = sh.split("/", 1)[1], cur.split("/", 1)[-1]
    try:
        doc = json.loads(facts.get("score", "none"))
    except ValueError:
        raise FlashError(f"{dev.spec}: the shadow {sid} has no score yet (state/shadow_score.json): is serve running "
                         "from the device root? It writes one at every stats interval") from None
    check_score(doc, f"{dev.spec}: state/shadow_score.json")
    if (doc.get("candidate_bundle"), doc.get("live_bundle")) != (sid, cid):
        raise FlashError(f"{dev.spec}: the score compares {doc.get('candidate_bundle')} with {doc.get('live_bundle')}, "
                         f"not the shadow {sid} with the live {cid}: serve has not picked them up yet (SIGHUP)")
    return sid, doc


def wait_scored(dev: Device, rule: Rule, wait_s: float, poll_s: float = 2.0) -> tuple[str, dict]:
    """shadow_score() once every step has rule.min_scored periods, or the last one at wait_s."""
    end, last = time.monotonic() + wait_s, None
    while True:
        try:
            last = shadow_score(dev)
            if min(last[1]["scored"]) >= rule.min_scored:
                return last
        except FlashError:
            if time.monotonic() >= end and last is None:
                raise
        if time.monotonic() >= end:
            return last
        time.sleep(poll_s)


def summary(doc: dict, decision: str) -> str:
    """One machine-read line (flash/fleet.py's table): periods scored, both MAEs, the decision."""
    return (f"shadow_score: scored={min(doc['scored'])} live_mae={doc['live_mae_mean']} "
            f"candidate_mae={doc['candidate_mae_mean']} decision={decision}")


def promote(dev: Device, rule: Rule, discard: bool = False, wait_s: float = 0.0,
            allow_downgrade: bool = False) -> tuple[int, str]:
    """(exit status, what to print): promoted (0), or refused with the numbers (3; the shadow removed
    with discard). wait_s: first wait up to that long for rule.min_scored periods on every step.
    allow_downgrade: promote a shadow created before the live release (refused otherwise, as deploy)."""
    try:
        sid, doc = wait_scored(dev, rule, wait_s) if wait_s > 0 else shadow_score(dev)
    except FlashError:
        if discard and wait_s > 0:
            dev.command("discard", timeout=120)
        raise
    ok, why = decide(doc, rule)
    text = f"{table(doc)}\n{rule}\n{summary(doc, 'promoted' if ok else 'refused')}\n"
    if ok:
        p = dev.command("promote", sid, f"{doc['live_mae_mean']:.9g}", f"{rule.margin:g}",
                        "allow-downgrade" if allow_downgrade else "-", timeout=120)
        if p.returncode != 0:
            raise FlashError(f"promote on {dev.spec} failed, nothing changed: {p.stderr.strip()[-300:]}")
        return 0, text + f"promoted: {sid} is live on {dev.spec} (previous keeps {doc['live_bundle']})"
    text += f"refused: {sid} is not promoted on {dev.spec}: " + "; ".join(why)
    if discard:
        p = dev.command("discard", timeout=120)
        if p.returncode != 0:
            raise FlashError(f"discard on {dev.spec} failed: {p.stderr.strip()[-300:]}")
        text += f"\ndiscarded: the shadow {sid} is removed from {dev.spec}"
    return 3, text


def discard(dev: Device) -> str:
    p = dev.command("discard", timeout=120)
    if p.returncode != 0:
        raise FlashError(f"discard on {dev.spec} failed: {p.stderr.strip()[-300:]}")
    return f"discarded: {(parse_facts(p.stdout).get('discarded') or '?')} is no longer the shadow on {dev.spec}"
