"""The models beside the live one in `serve`: the shadow and the auto-rollback watch, opened at start,
stepped and published by the service, and swapped on SIGHUP.

SIGHUP: `serve` picks up a new `current` or `shadow` (flash promote / deploy --shadow / discard).

A model that did not change keeps every slot's state. A promoted shadow goes live with the state
the shadow built on the same ticks, so no slot starts from zero; any other new live model does
(said on stderr). A live model with other features or another horizon needs a restart: the
service says so and keeps the model it has.
"""
from __future__ import annotations

import json
import os
import sys

from ..bundle import BundleError
from ..forecaster import load, target_index
from ..trust import check_signature_at_load
from .config import default_shadow, default_state_dir
from .rollback import AutoRollback
from .shadow import Shadow
from .sinks import ForecastFormat


def shadow_path(svc) -> str | None:
    """The shadow to run: [shadow] bundle / --shadow, else `<root>/shadow` beside a device root's `current`."""
    path = (svc.cfg.get("shadow") or {}).get("bundle") or default_shadow(svc.bundle)
    return path if path and os.path.exists(path) else None


def open_shadow(svc):
    """The candidate beside the live model (runtime/service/shadow.py), or None without one. One
    that flash put beside `current` (<root>/shadow) and that cannot run here (unsigned where the
    device requires signatures, another model's features) is said and counted (`shadow_failures`),
    and the live model serves alone: a bad candidate must not stop the live service, or crash-loop
    it under systemd. One named by --shadow or [shadow] bundle stops the start in one line."""
    named = (svc.cfg.get("shadow") or {}).get("bundle")
    path = named or shadow_path(svc)
    if not path:
        return None
    try:
        return _opened_shadow(svc, path)
    except (BundleError, ValueError, OSError) as e:
        if named:
            raise
        svc.health.count("shadow_failures")
        print(f"warning: shadow {path}: {str(e)[:300]}; serving without it", file=sys.stderr)
        return None


def _opened_shadow(svc, path: str):
    check_signature_at_load(path)
    if svc.state_path:
        os.makedirs(os.path.dirname(svc.state_path), exist_ok=True)
    shadow = Shadow(path, svc.fc, svc.cfg["model"], svc.cfg["state"].get("dir"))
    print(f"serve: shadow {shadow.cand_id} ({path}) beside the live {shadow.live_id}: scored, never published",
          file=sys.stderr)
    return shadow


def open_rollback(svc):
    """The auto-rollback watch (runtime/service/rollback.py), or None when off."""
    sh = svc.cfg["shadow"]
    if not sh.get("auto_rollback"):
        return None
    state = default_state_dir(svc.bundle)
    if state is None or target_index(svc.fc.manifest) is None:
        raise ValueError(f"auto_rollback: {svc.bundle} is not a device root's current release with its target "
                         "among the inputs: nothing to roll back to (flash deploy / promote make one)")
    return AutoRollback(os.path.dirname(state), svc.cfg["state"]["dir"], sh["retrain_window"])


def shadow_step(svc, tick, y) -> None:
    """The candidate on the same tick; whatever goes wrong there is counted, never costs a forecast."""
    try:
        svc.shadow.step(tick.x, y, tick.time_s)
    except Exception as e:          # noqa: BLE001
        svc.health.count("shadow_errors")
        svc.health.warn("shadow", f"shadow step failed: {type(e).__name__}: {str(e)[:200]}")


def publish_shadow(svc) -> None:
    """The comparison: shadow_score.json (atomic), stderr, and the `<base>/shadow` topic (retained)."""
    doc = svc.shadow.report()
    try:
        svc.shadow.write_scores()
    except OSError as e:
        svc.health.count("checkpoint_failures")
        svc.health.warn("shadow", f"could not write the shadow score ({e.strerror or e}); retried at the next stats")
    print("shadow " + json.dumps(doc), file=sys.stderr)
    if svc.link is not None:
        svc.link.publish(svc.stats_topic.rsplit("/", 1)[0] + "/shadow", json.dumps(doc), qos=0, retain=True)


def reload_models(svc) -> None:
    """Load what `current` and the shadow point at now, where either changed; never stops the service:
    a live release that cannot be loaded is counted in `reload_failures` (the one loaded serves on), a
    shadow in `shadow_failures` (the live model serves without it)."""
    try:
        if os.path.realpath(svc.bundle) != svc.live_path:
            _swap_live(svc)
    except Exception as e:          # noqa: BLE001 — a bad release on disk must not stop a running service
        svc.health.count("reload_failures")
        print(f"warning: reload: {type(e).__name__}: {str(e)[:300]}; serving what was loaded", file=sys.stderr)
    try:
        _swap_shadow(svc, shadow_path(svc))
    except Exception as e:          # noqa: BLE001
        svc.health.count("shadow_failures")
        svc.shadow = None
        print(f"warning: reload: shadow: {type(e).__name__}: {str(e)[:300]}; serving without it", file=sys.stderr)


def _swap_live(svc) -> None:
    m, path = svc.cfg["model"], os.path.realpath(svc.bundle)
    check_signature_at_load(svc.bundle)
    new = load(svc.bundle, m["engine"], m["precision"], streams=m["streams"], nan_policy=m["nan_policy"],
               intervals=m["intervals"])
    old = svc.fc
    if new.features != old.features or new.manifest["model"]["horizon"] != old.manifest["model"]["horizon"]:
        print(f"warning: reload: {path} reads other features or forecasts another horizon: restart serve to run it; "
              f"serving {old.manifest['bundle_id']} meanwhile", file=sys.stderr)
        return
    nid, sh = new.manifest["bundle_id"], svc.shadow
    if nid == old.manifest["bundle_id"]:
        new.adopt_state(old)                         # the same bundle flashed again (or at another path)
        how = "the same bundle: every stream keeps its state"
    elif sh is not None and sh.cand_id == nid:
        new.adopt_state(sh.fc)                       # the promoted shadow's state, built on the same ticks
        how = "with the shadow's state of every slot"
    else:
        how = "every stream starts from zero (another model)"
    svc.fc, svc.live_path = new, path
    if nid != old.manifest["bundle_id"]:
        svc.shadow = None                            # (the same bundle: the shadow's comparison goes on)
    svc.bind_series()
    svc.format = ForecastFormat(new.manifest, svc.clock.period_s)
    if svc.capture is not None:
        svc.capture.close()
        svc.capture = svc._open_capture()
    print(f"serve: reload: {nid} is live ({path}), {how}", file=sys.stderr)


def _swap_shadow(svc, path: str | None) -> None:
    old = svc.shadow
    if path is None:
        if old is not None:
            print(f"serve: reload: no shadow any more ({old.cand_id} removed)", file=sys.stderr)
        svc.shadow = None
        return
    if old is not None and old.bundle == os.path.realpath(path) and old.live_id == svc.fc.manifest["bundle_id"]:
        return                                       # unchanged: its state and scores stay
    check_signature_at_load(path)
    new = Shadow(path, svc.fc, svc.cfg["model"], svc.cfg["state"].get("dir"))
    if old is not None and old.cand_id == new.cand_id:
        new.fc.adopt_state(old.fc)
    svc.shadow = new
    svc.bind_series()
    print(f"serve: reload: shadow {new.cand_id} ({path}) beside the live {new.live_id}", file=sys.stderr)
