"""`runtime serve` against a real mosquitto broker and a real pseudo-terminal (socat): the same
forecasts as `runtime stream`, through broker restarts, bad payloads and kill -9."""
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

from conftest import CSV_REL, ENGINE_TIER, ROOT, ROUNDOFF, run_module
from runtime.times import BundleClock

parse_time = BundleClock().epoch         # the one time rule, UTC (the forecasts' times carry a Z)

mqtt = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

REL = CSV_REL       # the tiers live in conftest.py
T0 = 1_700_000_400  # a multiple of every test period: one reading per period, aligned


# -- helpers ------------------------------------------------------------------------------------
def readings(bundle, n, start=0):
    """n consecutive real readings (raw units) of the bundle's build series, and their times."""
    with np.load(str(bundle) + ".build.npz") as z:
        x = z["inputs"][start:start + n].astype(np.float64)
    features = [f["name"] for f in json.load(open(os.path.join(bundle, "manifest.json")))["features"]]
    return features, x


def atol_of(bundle):
    """The absolute tolerance in raw units: ROUNDOFF times the target's training std."""
    return ROUNDOFF * json.load(open(os.path.join(bundle, "manifest.json")))["scaler"]["targets"]["scale"][0]


def period_of(bundle):
    return json.load(open(os.path.join(bundle, "manifest.json")))["sample_period_s"] or 1.0


def write_csv(path, features, x, period, with_time=True):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow((["time"] if with_time else []) + features)
        for i, row in enumerate(x):
            w.writerow(([T0 + i * period] if with_time else []) + [repr(float(v)) for v in row])


def stream_forecasts(bundle, features, x, period, tmp_path, engine="numpy"):
    src, out = tmp_path / "stream_in.csv", tmp_path / "stream_out.csv"
    write_csv(src, features, x, period)
    if out.exists():
        out.unlink()
    run_module("runtime", "stream", str(bundle), "--engine", engine, "--input", str(src), "--output", str(out))
    with open(out) as f:
        rows = list(csv.reader(f))
    return np.array([[float(v) for v in r[1:]] for r in rows[1:]])          # drop the passed-through time


class Collector:
    """A real MQTT subscriber collecting every message on some topics."""

    def __init__(self, broker, topics):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        host, port = broker.split(":")
        self.messages, self.lock = [], threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{os.getpid()}-{time.time_ns()}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, *_: [c.subscribe(t, qos=1) for t in topics]
        subscribed = threading.Event()                        # every SUBACK in: nothing published after is missed
        acks = []
        self.c.on_subscribe = lambda *_: (acks.append(1), len(acks) >= len(topics) and subscribed.set())
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600      # a persistent session: what the broker kept survives its restart
        self.c.connect(host, int(port), clean_start=False, properties=props)
        self.c.loop_start()
        assert subscribed.wait(10), f"no SUBACK for {topics} within 10 s"

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload.decode(), msg.retain))

    def json_on(self, prefix):
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.startswith(prefix)]

    def wait(self, prefix, n, timeout=30, distinct=None):
        """Messages on `prefix` once there are n of them (n distinct values of `distinct(msg)`:
        QoS 1 redeliveries are not new ticks), or at the timeout."""
        count = (lambda ms: len(ms)) if distinct is None else (lambda ms: len({distinct(m) for m in ms}))
        end = time.monotonic() + timeout
        while count(self.json_on(prefix)) < n and time.monotonic() < end:
            time.sleep(0.05)
        return self.json_on(prefix)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def publisher(broker, client_id="pub"):
    host, port = broker.split(":")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-{time.time_ns()}")
    c.connect(host, int(port))
    c.loop_start()
    return c


def publish_rows(c, features, x, period, node="n1", start=0, qos=1):
    infos = []
    for i, row in enumerate(x):
        payload = {"time": T0 + (start + i) * period, **{f: float(v) for f, v in zip(features, row)}}
        infos.append(c.publish(f"sensors/{node}/state", json.dumps(payload), qos=qos))
    for info in infos:
        info.wait_for_publish(10)


class Serve:
    """`python -m runtime serve` as a subprocess; stderr collected by a thread."""

    def __init__(self, bundle, broker, tmp_path, *extra, engine="numpy"):
        args = [sys.executable, "-m", "runtime", "serve", str(bundle), "--broker", broker,
                "--subscribe", "sensors/+/state", "--publish", "forecasts/{node}", "--engine", engine,
                "--grace-s", "0.5", "--stats-every", "1", "--client-id", f"svc-{tmp_path.name}", *extra]
        self.proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.err = []
        self.reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        self.wait_for("mqtt: connected")

    def wait_for(self, text, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in line for line in self.err):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"serve did not say {text!r}; stderr:\n{''.join(self.err)[-3000:]}")

    def stats(self):
        docs = [json.loads(line[6:]) for line in self.err if line.startswith("stats ")]
        return docs[-1] if docs else {}

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)       # the service dumps every thread's stack
            time.sleep(3)
            self.proc.kill()
            raise AssertionError("serve did not stop within 30 s of SIGTERM; stderr:\n" + "".join(self.err)[-6000:])
        self.reader.join(10)                        # its last lines (the final stats) are read
        return self.proc.returncode


def values(msgs):
    return np.array([[s["value"] for s in m["forecast"]] for m in msgs])


# -- end to end over a real broker --------------------------------------------------------------
def test_replay_over_mqtt_gives_the_stream_forecasts(daphnet_bundle, broker, tmp_path):
    """A recorded stream published with event times, at full speed, gives exactly `runtime
    stream`'s forecasts over the same rows; with 1,000 malformed payloads mixed in, still."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 300)
    want = stream_forecasts(daphnet_bundle, features, x, period, tmp_path)
    svc = Serve(daphnet_bundle, broker.address, tmp_path, "--streams", "4")
    sub = Collector(broker.address, ["forecasts/#", "gru-edge/+/status"])
    pub = publisher(broker.address)
    bad = [b"{not json", b"[1,2,3]", json.dumps({features[0]: "hot"}).encode(), b'{"bogus": 1}',
           json.dumps({"time": "yesterday", features[0]: 1.0}).encode(), b"x" * 1_000_000, b"", b"null"]
    rng = np.random.default_rng(0)
    at = sorted(rng.integers(0, len(x), 1000))
    for i, row in enumerate(x):
        for _ in range(at.count(i)):
            pub.publish("sensors/n1/state", bad[rng.integers(len(bad))], qos=1)
        pub.publish("sensors/n1/state", json.dumps({"time": T0 + i * period, **dict(zip(features, map(float, row)))}), qos=1)
    got = sub.wait("forecasts/n1", len(x))
    svc.wait_for('"malformed": 1000')
    assert svc.stop() == 0
    assert len(got) == len(x)
    np.testing.assert_allclose(values(got), want[:, :values(got).shape[1]], rtol=REL, atol=atol_of(daphnet_bundle))
    first = got[0]
    assert first["node"] == "n1" and first["target"] and first["bundle_id"]
    assert parse_time(first["time"]) == pytest.approx(T0, abs=1e-3)
    assert parse_time(first["forecast"][0]["time"]) == pytest.approx(T0 + period, abs=1e-3)
    status = [p for t, p, r in sub.messages if t.endswith("/status")]
    assert status[0] == "online" and status[-1] == "offline"
    sub.close(), pub.loop_stop()


def test_broker_restart_mid_stream_loses_and_duplicates_nothing(daphnet_bundle, broker, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 200)
    want = stream_forecasts(daphnet_bundle, features, x, period, tmp_path)
    svc = Serve(daphnet_bundle, broker.address, tmp_path, "--streams", "4")
    sub = Collector(broker.address, ["forecasts/#"])
    pub = publisher(broker.address, "pub1")
    publish_rows(pub, features, x[:100], period)
    pub.loop_stop(), pub.disconnect()
    sub.wait("forecasts/n1", 99)
    broker.stop()                    # both persistent sessions are saved by the broker
    svc.wait_for("mqtt: disconnected")
    broker.start()
    pub = publisher(broker.address, "pub2")
    publish_rows(pub, features, x[100:], period, start=100)    # queued for the service while it reconnects
    svc.wait_for("session resumed")
    got = sub.wait("forecasts/n1", 200, distinct=lambda m: m["time"])
    by_time = {}
    for m in got:                    # QoS 1 is at least once: a redelivered forecast must be the same one
        t = parse_time(m["time"])
        assert by_time.setdefault(t, m) == m, "a tick was forecast twice, differently"
    idx = [int(round((t - T0) / period)) for t in sorted(by_time)]
    assert idx == list(range(200)), f"ticks lost: {sorted(set(range(200)) - set(idx))[:10]}"
    np.testing.assert_allclose(values([by_time[t] for t in sorted(by_time)]), want[:, :len(got[0]["forecast"])],
                               rtol=REL, atol=atol_of(daphnet_bundle))
    assert svc.stop() == 0
    assert svc.stats()["mqtt"]["disconnects"] >= 1
    sub.close(), pub.loop_stop()


def test_kill_9_resumes_from_the_last_checkpoint(daphnet_bundle, broker, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 160)
    want = stream_forecasts(daphnet_bundle, features, x, period, tmp_path)
    state = tmp_path / "state"
    args = ("--streams", "4", "--state-dir", str(state), "--checkpoint-every", "10")
    svc = Serve(daphnet_bundle, broker.address, tmp_path, *args)
    sub = Collector(broker.address, ["forecasts/#", "gru-edge/+/status"])
    pub = publisher(broker.address)
    publish_rows(pub, features, x[:81], period)           # rows 0..79 close (80 ticks: a checkpoint), 80 stays open
    sub.wait("forecasts/n1", 80)
    end = time.monotonic() + 30                           # the stats after the 80th tick: its checkpoint is written
    while svc.stats().get("ticks", 0) < 80 and time.monotonic() < end:
        time.sleep(0.05)
    svc.proc.kill()
    svc.proc.wait()
    end = time.monotonic() + 5          # the broker sends the last will once the keepalive runs out or the socket closes
    while [p for t, p, _ in sub.messages if t.endswith("/status")][-1:] != ["offline"] and time.monotonic() < end:
        time.sleep(0.05)
    assert [p for t, p, _ in sub.messages if t.endswith("/status")][-1] == "offline"      # the last will
    svc = Serve(daphnet_bundle, broker.address, tmp_path, *args)
    svc.wait_for("restored the state of 1 stream")
    publish_rows(pub, features, x[80:], period, start=80)
    got = sub.wait("forecasts/n1", 160, distinct=lambda m: m["time"])
    assert svc.stop() == 0
    tail = {t: m for m in got if (t := parse_time(m["time"])) >= T0 + 80 * period - 1e-3}
    idx = [int(round((t - T0) / period)) for t in sorted(tail)]
    assert idx == list(range(80, 160))
    np.testing.assert_allclose(values([tail[t] for t in sorted(tail)]), want[80:, :len(got[0]["forecast"])],
                               rtol=REL, atol=atol_of(daphnet_bundle))
    sub.close(), pub.loop_stop()


def test_many_nodes_one_call_refusal_and_discovery(daphnet_bundle, broker, tmp_path):
    """Four slots: four nodes are served from one batched call (each its own stream), a fifth is
    refused and counted; Home Assistant gets one retained discovery config per node."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 40)
    sub = Collector(broker.address, ["forecasts/#", "homeassistant/#"])
    svc = Serve(daphnet_bundle, broker.address, tmp_path, "--streams", "4", "--homeassistant", "--intervals",
                "--engine", "auto")      # the batch-4 TFLite artifact where an interpreter is installed
    pub = publisher(broker.address)
    nodes = (("a", 0), ("b", 5), ("c", 10), ("d", 15), ("e", 20))
    for i in range(len(x)):                       # live-like: every node's reading of a period, then the next
        for node, shift in nodes:
            publish_rows(pub, features, np.roll(x, shift, axis=0)[i:i + 1], period, node=node, start=i)
    got = {n: sub.wait(f"forecasts/{n}", 40) for n in "abcd"}
    svc.wait_for('"refused_readings": 40')
    assert svc.stop() == 0
    assert sub.json_on("forecasts/e") == []
    step = got["a"][0]["forecast"][0]
    assert {"value", "time"} < set(step) and any(k.startswith("lower_") for k in step)
    configs = sub.json_on("homeassistant/sensor/")
    assert len(configs) == 4 and all(c["state_topic"].startswith("forecasts/") for c in configs)
    for n, shift in (("b", 5), ("d", 15)):          # each node's own stream: what it alone would give
        alone = stream_forecasts(daphnet_bundle, features, np.roll(x, shift, axis=0), period, tmp_path)
        np.testing.assert_allclose(values(got[n]), alone[:, :values(got[n]).shape[1]], rtol=ENGINE_TIER, atol=ENGINE_TIER)
    sub.close(), pub.loop_stop()


# -- serial and stdin ---------------------------------------------------------------------------
def test_serial_pty_csv_lines(daphnet_bundle, tmp_path):
    """CSV lines from a real pseudo-terminal pair (socat), forecasts to an appended CSV."""
    pytest.importorskip("serial")
    if not shutil.which("socat"):
        pytest.fail("socat is not installed (make test / .ci/run install it with apt-get)")
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 120)
    want = stream_forecasts(daphnet_bundle, features, x, period, tmp_path)
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"])
    try:
        end = time.monotonic() + 5
        while not (a.exists() and b.exists()) and time.monotonic() < end:
            time.sleep(0.05)
        out = tmp_path / "forecasts.csv"
        proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", daphnet_bundle, "--serial", str(a),
                                 "--csv", str(out), "--engine", "numpy", "--grace-s", "0.3"], cwd=ROOT,
                                stderr=subprocess.PIPE, text=True)
        err = []
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
        end = time.monotonic() + 60                 # the port is open before a line is written
        while not any(": open" in ln for ln in err) and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        src = tmp_path / "lines.csv"
        write_csv(src, features, x, period)
        with open(b, "wb", buffering=0) as tty:
            for line in open(src, "rb"):
                tty.write(line)
        end = time.monotonic() + 30
        while (not out.exists() or sum(1 for _ in open(out)) < len(x) + 1) and time.monotonic() < end:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        time.sleep(0.1)
        err = "".join(err)
        assert proc.returncode == 0, err
    finally:
        socat.terminate()
    rows = list(csv.reader(open(out)))
    assert rows[0][:3] == ["node", "time", "bundle_id"] and len(rows) == len(x) + 1, err[-2000:]
    got = np.array([[float(v) for v in r[3:]] for r in rows[1:]])
    np.testing.assert_allclose(got, want, rtol=REL, atol=atol_of(daphnet_bundle))


def test_stdin_source_and_corrupt_state_moved_aside(daphnet_bundle, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 50)
    want = stream_forecasts(daphnet_bundle, features, x, period, tmp_path)
    src = tmp_path / "in.csv"
    write_csv(src, features, x, period)
    state = tmp_path / "state"
    state.mkdir()
    (state / "serve-state.npz").write_bytes(b"PK\x03\x04 garbage")
    p = subprocess.run([sys.executable, "-m", "runtime", "serve", daphnet_bundle, "--stdin", "--stdout", "--engine",
                        "numpy", "--state-dir", str(state)], cwd=ROOT, stdin=open(src), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    msgs = [json.loads(line) for line in p.stdout.splitlines()]
    np.testing.assert_allclose(values(msgs), want, rtol=REL, atol=atol_of(daphnet_bundle))
    assert "moved it to" in p.stderr and any(f.name.startswith("serve-state.npz.corrupt-") for f in state.iterdir())
    assert (state / "serve-state.npz").exists()


def test_serve_without_a_source_or_broker_is_a_clear_error(daphnet_bundle):
    p = run_module("runtime", "serve", daphnet_bundle, "--publish", "f/{node}", check=False)
    assert p.returncode == 2 and "no broker" in p.stderr and "Traceback" not in p.stderr
    p = run_module("runtime", "serve", daphnet_bundle, "--csv", "/tmp/x.csv", check=False)
    assert p.returncode == 2 and "no source" in p.stderr


def test_a_switched_bundle_starts_every_stream_from_zero_and_says_so(daphnet_bundle, two_layer_bundle, tmp_path):
    """`current` switched by flash: the next start refuses the old bundle's state (no crash), says
    so, and checkpoints the new bundle's state in its place."""
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 20)
    src, state = tmp_path / "in.csv", tmp_path / "state"
    write_csv(src, features, x, period)
    runs = []
    for bundle in (daphnet_bundle, two_layer_bundle):
        p = subprocess.run([sys.executable, "-m", "runtime", "serve", bundle, "--stdin", "--stdout", "--engine", "numpy",
                            "--state-dir", str(state)], cwd=ROOT, stdin=open(src), capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        runs.append(p)
    assert "not restoring" in runs[1].stderr and "belongs to bundle" in runs[1].stderr
    assert len(runs[1].stdout.splitlines()) == len(x)
    bid = json.load(open(os.path.join(two_layer_bundle, "manifest.json")))["bundle_id"]
    with np.load(state / "serve-state.npz") as z:
        assert str(z["bundle_id"]) == bid
