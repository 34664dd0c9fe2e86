"""A new model proven on live data before it goes live (issue 29): shadow, score, promote, discard.
A real mosquitto, a real loopback sshd for flash, serve running from a device root."""
import hashlib
import json
import os
import sys
import time

import numpy as np

from conftest import CSV_REL, copy_bundle, reseal, run_module
from test_serve import T0, Collector, Serve, atol_of, period_of, publisher, readings, stream_forecasts
from test_fleet import HOSTS, fleet, fleet_cmd, table_rows  # noqa: F401  (fleet: three sshd, a fixture)
from test_serve_edges import csv_text, serve_stdin

NODES = ("a", "b")


def shifted(src, dst, shift):
    """A copy of `src` whose every forecast is `shift` target units off (0: the same forecasts), and
    without a deadband (which hides a state from the forecasts), that still verifies (its golden
    forecasts recomputed, its id resealed)."""
    from runtime.forecaster import load, step_rows
    copy_bundle(src, dst)
    m = json.load(open(os.path.join(dst, "manifest.json")))
    m["scaler"]["targets"]["offset"][0] += shift
    m["model"].pop("deadband", None)
    reseal(dst, m)
    g = os.path.join(dst, "golden.npz")
    with np.load(g) as z:
        arrays = {k: z[k] for k in z.files}
    for k in [k for k in arrays if k.startswith("forecast/")]:
        art = next(a for a in m["artifacts"] if a["file"] == k[len("forecast/"):])
        fc = load(dst, engine=art["engine"], precision=art["precision"], nan_policy="raise", deadband=False)
        arrays[k] = step_rows(fc, arrays["inputs"], arrays.get("times"))
    np.savez(g, **arrays)
    data = open(g, "rb").read()
    m["golden"]["sha256"], m["golden"]["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    reseal(dst, m)
    return dst


def bundle_id(bundle):
    return json.load(open(os.path.join(bundle, "manifest.json")))["bundle_id"]


def flash(env, *args, check=True):
    p = run_module("flash", *args, env=env, check=False, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def publish(pub, features, x, period, start, stop):
    infos = [pub.publish(f"sensors/{node}/state", json.dumps({"time": T0 + i * period,
                                                              **dict(zip(features, map(float, x[i])))}), qos=1)
             for i in range(start, stop) for node in NODES]
    for info in infos:
        info.wait_for_publish(10)


def wait_score(root, candidate, n, timeout=60):
    """shadow_score.json once it compares `candidate` over at least n periods on every step."""
    path, end = root / "state" / "shadow_score.json", time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            doc = json.load(open(path))
            if doc["candidate_bundle"] == candidate and min(doc["scored"]) >= n:
                return doc
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no score of {candidate} over {n} periods in {path} within {timeout} s")


def comparisons(sub, candidate, timeout=15):
    """The `<base>/shadow` messages about `candidate`, once there is one (or at the timeout)."""
    end = time.monotonic() + timeout
    while True:
        got = [m for m in sub.json_on("gru-edge/") if m["candidate_bundle"] == candidate]
        if got or time.monotonic() > end:
            return got
        time.sleep(0.05)


def test_shadow_promote_a_better_model_discard_a_worse_one(two_layer_bundle, broker, sshd, tmp_path):
    """Live: a model off by +200. Shadow: the real one, scored on the same readings, never
    published, promoted by the rule; it goes live with the state it built (its forecasts then are
    exactly `stream`'s over every reading). A worse shadow is refused with its numbers and discarded,
    and the live model's state survives both SIGHUPs."""
    period = period_of(two_layer_bundle)
    features, x = readings(two_layer_bundle, 360)
    real = shifted(two_layer_bundle, tmp_path / "real", 0.0)
    bad, worse = shifted(two_layer_bundle, tmp_path / "bad", 200.0), shifted(two_layer_bundle, tmp_path / "worse", -150.0)
    good, root = bundle_id(real), tmp_path / "device"
    dev = ("gru-device", "--root", str(root))
    flash(sshd, "deploy", *dev, "--bundle", bad, "--engine", "onnx")
    out = flash(sshd, "deploy", *dev, "--bundle", real, "--shadow").stdout
    assert "is the shadow" in out and os.readlink(root / "current") == f"releases/{bundle_id(bad)}"
    svc = Serve(root / "current", broker.address, tmp_path, "--streams", "4", "--homeassistant")
    sub = Collector(broker.address, ["forecasts/#", "gru-edge/+/shadow", "homeassistant/sensor/+/config"])
    pub = publisher(broker.address)
    publish(pub, features, x, period, 0, 160)
    doc = wait_score(root, good, 200)
    assert doc["live_bundle"] == bundle_id(bad) and doc["candidate_mae_mean"] < doc["live_mae_mean"] / 2
    assert {m["bundle_id"] for m in sub.json_on("forecasts/")} == {bundle_id(bad)}     # never the candidate's
    published = comparisons(sub, good)               # the comparison, on MQTT (published just after the file)
    assert published and published[-1]["live_bundle"] == bundle_id(bad)
    sensor = [c for c in sub.json_on("homeassistant/") if c["state_topic"].endswith("/shadow")]
    assert len(sensor) == 1 and "candidate_mae_mean" in sensor[0]["value_template"]
    p = flash(sshd, "promote", *dev, "--min-scored", "200")
    assert "promoted" in p.stdout and "rule: >= 200 periods" in p.stdout, p.stdout
    assert os.readlink(root / "current") == f"releases/{good}" and os.readlink(root / "previous") == f"releases/{bundle_id(bad)}"
    assert not os.path.lexists(root / "shadow") and (root / "state" / "promoted").exists()
    svc.wait_for(f"reload: {good} is live")
    svc.wait_for("with the shadow's state of every slot")
    publish(pub, features, x, period, 160, 200)
    flash(sshd, "deploy", *dev, "--bundle", worse, "--shadow")
    svc.wait_for(f"reload: shadow {bundle_id(worse)}")
    publish(pub, features, x, period, 200, 360)
    doc = wait_score(root, bundle_id(worse), 200)
    p = flash(sshd, "promote", *dev, "--min-scored", "200", "--discard", check=False)
    assert p.returncode == 3 and "refused" in p.stdout and "discarded" in p.stdout, p.stdout + p.stderr
    rows = [r.split("|")[1:-1] for r in p.stdout.splitlines() if r.startswith("| ") and r[2].isdigit()]
    assert len(rows) == len(doc["scored"])                      # the numbers, per horizon step
    assert all(int(n) >= 200 for _, n, _, _, _ in rows) and any(float(c) > 1.02 * float(lv) for _, _, lv, c, _ in rows)
    assert os.readlink(root / "current") == f"releases/{good}" and not os.path.lexists(root / "shadow")
    assert not (root / "releases" / bundle_id(worse)).exists()
    svc.wait_for("no shadow any more")
    got = sub.wait("forecasts/a", 360, distinct=lambda m: m["time"])
    assert svc.stop() == 0
    pub.loop_stop(), sub.close()
    live = sorted((m for m in got if m["bundle_id"] == good), key=lambda m: m["time"])
    assert len(live) == 200, len(live)
    want = stream_forecasts(real, features, x, period, tmp_path)[160:]
    ys = np.array([[s["value"] for s in m["forecast"]] for m in live])
    np.testing.assert_allclose(ys, want[:, :ys.shape[1]], rtol=CSV_REL, atol=atol_of(two_layer_bundle))


def test_a_candidate_that_needs_a_feature_the_readings_never_carry_is_one_line(two_layer_bundle, calendar_bundle):
    period = period_of(two_layer_bundle)
    features, x = readings(two_layer_bundle, 5)
    rc, got, err = serve_stdin(two_layer_bundle, csv_text(features, x, period).encode(), "--shadow", calendar_bundle)
    assert rc != 0 and "Traceback" not in err and got == [], err[-2000:]
    line = err.strip().splitlines()[-1]
    assert "the candidate needs temp, load, which the readings never carry" in line, line


def test_the_shadow_is_scored_on_the_same_truths_and_its_score_survives_a_restart(two_layer_bundle, tmp_path):
    """The live model's side of the comparison is the live model's own running score (one definition)."""
    period, state = period_of(two_layer_bundle), tmp_path / "state"
    features, x = readings(two_layer_bundle, 300)
    worse = shifted(two_layer_bundle, tmp_path / "worse", 50.0)
    args = ("--shadow", worse, "--state-dir", str(state), "--intervals")
    rc, got, err = serve_stdin(two_layer_bundle, csv_text(features, x[:150], period).encode(), *args)
    assert rc == 0, err[-2000:]
    assert {m["bundle_id"] for m in got} == {bundle_id(two_layer_bundle)}
    first = json.load(open(state / "shadow_score.json"))
    live = [json.loads(line[6:]) for line in err.splitlines() if line.startswith("stats ")][-1]["score"]
    assert first["scored"] == live["scored"]
    np.testing.assert_allclose(first["live_mae"], live["mae"], rtol=1e-9)
    assert all(c > a for c, a in zip(first["candidate_mae"], first["live_mae"]))
    rc, got, err = serve_stdin(two_layer_bundle, csv_text(features, x[150:], period, start=150, header=True).encode(),
                               *args)
    assert rc == 0, err[-2000:]
    again = json.load(open(state / "shadow_score.json"))
    assert min(again["scored"]) > max(first["scored"])           # kept over the restart, then added to


def test_a_corrupt_saved_shadow_score_starts_afresh_in_one_line(two_layer_bundle, tmp_path):
    """A shadow-scores.npz that is a broken zip (a power cut mid-write on an old runtime, a bad SD
    block) stopped serve at every start: BadZipFile, a traceback, a crash loop under systemd."""
    period, state = period_of(two_layer_bundle), tmp_path / "state"
    features, x = readings(two_layer_bundle, 20)
    state.mkdir()
    (state / "shadow-scores.npz").write_bytes(b"PK\x03\x04garbagegarbage")
    worse = shifted(two_layer_bundle, tmp_path / "worse", 50.0)
    rc, got, err = serve_stdin(two_layer_bundle, csv_text(features, x, period).encode(), "--shadow", worse,
                               "--state-dir", str(state))
    assert rc == 0 and "Traceback" not in err and len(got) == len(x), err[-2000:]
    assert "is no saved score (BadZipFile); the scores start afresh" in err


# -- the fleet: a worse candidate halts at the canary, a better one reaches every host ----------------
class Replay:
    """Readings of nodes a and b, one period every `pace` s, with event times, until stopped (the
    recorded rows over and over, time going on)."""

    def __init__(self, broker, features, x, period, pace=0.01):
        import threading
        self.pub, self.stop_event = publisher(broker), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(features, x, period, pace), daemon=True)
        self.thread.start()

    def _run(self, features, x, period, pace):
        i = 0
        while not self.stop_event.wait(pace):
            row = dict(zip(features, map(float, x[i % len(x)])))
            for node in NODES:
                self.pub.publish(f"sensors/{node}/state", json.dumps({"time": T0 + i * period, **row}), qos=1)
            i += 1

    def stop(self):
        self.stop_event.set()
        self.thread.join(10)
        self.pub.loop_stop()


def test_fleet_gated_by_live_quality(two_layer_bundle, broker, fleet, tmp_path):
    """Three hosts (real sshd each, real Ansible), each running serve from its device root: a better
    candidate is promoted on all three, the table matching the device roots; then a worse one halts
    at the canary, its shadow removed, and no host changes."""
    fl = fleet
    roots = {h: tmp_path / f"root-{h}" for h in HOSTS}
    inv = {"path": str(tmp_path / "inventory.ini"), "roots": roots, "cwd": tmp_path,
           "env": {"FLASH_SSH_CONFIG": fl["config"], "FLASH_DEVICE_PYTHON": sys.executable}}
    (tmp_path / "inventory.ini").write_text("[sensors]\n" + "".join(f"{h} device_root={roots[h]}\n" for h in HOSTS))
    real = shifted(two_layer_bundle, tmp_path / "real", 0.0)
    bad, worse = shifted(two_layer_bundle, tmp_path / "bad", 200.0), shifted(two_layer_bundle, tmp_path / "worse", -150.0)
    fleet_cmd(inv, "deploy", "--bundle", bad, "--engine", "onnx")
    svcs = [Serve(roots[h] / "current", broker.address, tmp_path, "--streams", "4", "--client-id", f"svc-{h}")
            for h in HOSTS]
    period = period_of(two_layer_bundle)
    features, x = readings(two_layer_bundle, 3000)
    replay = Replay(broker.address, features, x, period, pace=0.03)   # 33 periods/s: three services keep up on a busy machine
    try:
        gate = ("--strategy", "shadow", "--min-scored", "100", "--shadow-timeout", "60")
        p = fleet_cmd(inv, "deploy", "--bundle", real, *gate, "--serial", "1,100%")     # a canary, then the rest
        rows = table_rows(p.stdout)
        assert [r[7] for r in rows] == ["promoted"] * 3 and "promote rule: >= 100 periods" in p.stdout, p.stdout
        for r in rows:
            h = r[1]
            assert r[3] == bundle_id(real) == os.readlink(roots[h] / "current").split("/")[1]
            assert r[2] == bundle_id(bad) == os.readlink(roots[h] / "previous").split("/")[1]
            assert float(r[5]) < float(r[4]) and int(r[6]) >= 100
        p = fleet_cmd(inv, "deploy", "--bundle", worse, *gate, check=False)
        assert p.returncode == 1 and "HALTED" in p.stdout, p.stdout + p.stderr[-2000:]
        rows = table_rows(p.stdout)
        assert [r[1] for r in rows] == list(HOSTS) and rows[0][7] == "refused" and int(rows[0][6]) >= 100, p.stdout
        assert float(rows[0][5]) > float(rows[0][4]) and [r[7] for r in rows[1:]] == ["not reached"] * 2
        for h in HOSTS:                                            # every host on its live release, no shadow
            assert os.readlink(roots[h] / "current") == f"releases/{bundle_id(real)}"
            assert not os.path.lexists(roots[h] / "shadow")
        for svc in svcs:
            svc.wait_for(f"reload: {bundle_id(real)} is live")
    finally:
        replay.stop()
        for svc in svcs:
            svc.stop()


def test_auto_rollback_when_a_promoted_models_live_score_collapses_once(two_layer_bundle, broker, sshd, tmp_path):
    """Promoted by the rule, then the target's readings turn to noise: over retrain_window scored
    periods the new live MAE is far worse than the replaced model's at promotion, so serve switches
    back to previous, says so (journal, status topic, state/rolled_back for `flash status`), once."""
    period = period_of(two_layer_bundle)
    features, x = readings(two_layer_bundle, 460)
    x[160:, 0] += np.random.default_rng(0).normal(0.0, 3000.0, len(x) - 160)      # the sensor goes bad
    real = shifted(two_layer_bundle, tmp_path / "real", 0.0)
    bad = shifted(two_layer_bundle, tmp_path / "bad", 200.0)
    root, cfg = tmp_path / "device", tmp_path / "device.toml"
    cfg.write_text("[shadow]\nauto_rollback = true\nretrain_window = 50\n")
    dev = ("gru-device", "--root", str(root))
    flash(sshd, "deploy", *dev, "--bundle", bad, "--engine", "onnx")
    flash(sshd, "deploy", *dev, "--bundle", real, "--shadow")
    svc = Serve(root / "current", broker.address, tmp_path, "--streams", "4", "--config", str(cfg))
    sub = Collector(broker.address, ["gru-edge/+/status"])
    pub = publisher(broker.address)
    publish(pub, features, x, period, 0, 160)
    wait_score(root, bundle_id(real), 200)
    assert "promoted" in flash(sshd, "promote", *dev, "--min-scored", "200").stdout
    svc.wait_for(f"reload: {bundle_id(real)} is live")
    publish(pub, features, x, period, 160, 300)
    svc.wait_for("auto-rollback")
    svc.wait_for(f"reload: {bundle_id(bad)} is live")
    assert os.readlink(root / "current") == f"releases/{bundle_id(bad)}"
    assert os.readlink(root / "previous") == f"releases/{bundle_id(real)}"
    publish(pub, features, x, period, 300, 460)                   # the old model scores no better: no second time
    time.sleep(3)
    assert svc.stop() == 0
    pub.loop_stop()
    assert sum("auto-rollback" in line for line in svc.err) == 1
    events = [json.loads(p) for t, p, _ in sub.messages if p.startswith("{")]
    sub.close()
    assert [e["event"] for e in events] == ["auto-rollback"] and events[0]["from"] == bundle_id(real)
    assert events[0]["live_mae"] > 1.02 * events[0]["recorded_mae"]
    status = flash(sshd, "status", "--device", *dev).stdout
    assert "rolled_back=" in status and f"{bundle_id(real)} -> {bundle_id(bad)}" in status, status


def test_a_candidate_that_stops_forecasting_is_not_scored_better_for_it(two_layer_bundle):
    """A candidate whose state goes non-finite forecasts NaN (and is reset); those hard periods left its
    MAE but stayed in the live model's, so an unstable candidate could look better and be promoted."""
    import runtime
    from flash.promote import Rule, decide
    from runtime.service.shadow import Shadow
    live = runtime.load(two_layer_bundle, engine="numpy")
    m = {"engine": "numpy", "precision": "fp32", "nan_policy": "hold"}
    shadow = Shadow(two_layer_bundle, live, m, None)         # the same model: equal scores, step by step
    features, x = readings(two_layer_bundle, 200)
    step, k = shadow.fc.step, live.manifest["model"]["horizon"]
    for i, row in enumerate(x):
        y_live = live.step(row)
        if 50 <= i < 150:                                   # the candidate's state blew up here
            shadow.fc.step = lambda r, time=None: step(r, time) * np.nan        # its forecasts lost
        else:
            shadow.fc.step = step
        shadow.step(row[None], np.asarray(y_live)[None], 0.0)
    doc = shadow.report()
    assert doc["candidate_missing"] == 100 * k
    np.testing.assert_allclose(doc["candidate_mae"], doc["live_mae"], rtol=1e-6)   # scored on the same periods
    ok, why = decide(doc, Rule(min_scored=1))
    assert not ok and any("no forecast 600 times" in w for w in why)
