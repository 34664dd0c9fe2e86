"""`runtime serve` against what shares a real mosquitto broker: retained poison, giant numbers,
a SIGTERM with a backlog, a burst the broker drops, redeliveries, clocks that run ahead, junk node
ids, look-alike node names. Each test is a case of the service-hardening audit."""
import json
import signal
import threading
import time

import numpy as np
import pytest

from conftest import LoopbackMosquitto
from test_serve import (REL, T0, Collector, Serve, atol_of, period_of, publish_rows, publisher, readings,
                        stream_forecasts, values)

pytest.importorskip("paho.mqtt.client")


def payload(features, row, t):
    return json.dumps({"time": t, **{f: float(v) for f, v in zip(features, row)}})


def by_tick(msgs, period):
    """{tick index: message}: QoS 1 may deliver a forecast twice; it must be the same one."""
    from runtime.times import BundleClock
    out = {}
    for m in msgs:
        i = int(round((BundleClock().epoch(m["time"]) - T0) / period))
        assert out.setdefault(i, m) == m, "a tick was forecast twice, differently"
    return out


# -- cases 1 and 2: poison that was retained, giant numbers --------------------------------------
def test_retained_poison_does_not_crash_loop_serve(daphnet_bundle, broker, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 30)
    pub = publisher(broker.address)
    poison = {"sensors/n1/state": "[" * 5000, "sensors/n2/state": '{"a":' * 9000 + "1" + "}" * 9000,
              "sensors/n3/state": '{"%s": %s}' % (features[0], "9" * 400),
              "sensors/n4/state": '{"time": %s, "%s": 1}' % ("9" * 400, features[0]),
              "sensors/n5/state": '{"time": -1e12, "%s": 1}' % features[0]}
    for topic, text in poison.items():
        pub.publish(topic, text, qos=1, retain=True).wait_for_publish(10)
    sub = Collector(broker.address, ["forecasts/#"])
    for run in range(2):                           # and again after a restart: no crash loop
        svc = Serve(daphnet_bundle, broker.address, tmp_path, "--streams", "8")
        publish_rows(pub, features, x[10 * run:10 * run + 10], period, node="good", start=10 * run)
        svc.wait_for(f'"malformed": {len(poison)}')
        sub.wait("forecasts/good", 10 * run + 9)
        assert svc.proc.poll() is None and svc.stop() == 0
        text = "".join(svc.err)
        assert "Traceback" not in text and "recursion" not in text.lower(), text[-3000:]
    assert len(by_tick(sub.json_on("forecasts/good"), period)) >= 19
    sub.close(), pub.loop_stop()


# -- case 6: nothing acknowledged is lost at a SIGTERM -------------------------------------------
def test_sigterm_with_a_backlog_loses_no_acknowledged_reading(daphnet_bundle, broker, tmp_path):
    period = period_of(daphnet_bundle)
    n = 6000
    features, x = readings(daphnet_bundle, n)
    want = stream_forecasts(daphnet_bundle, features, x, period, tmp_path)
    args = ("--streams", "4", "--state-dir", str(tmp_path / "state"), "--stats-every", "0.5")
    svc = Serve(daphnet_bundle, broker.address, tmp_path, *args)
    sub = Collector(broker.address, ["forecasts/#"])
    pub = publisher(broker.address)
    publish_rows(pub, features, x[:1000], period)
    sub.wait("forecasts/n1", 999)
    svc.proc.send_signal(signal.SIGSTOP)           # the backlog builds up in the broker and the socket
    publish_rows(pub, features, x[1000:], period, start=1000)
    svc.proc.send_signal(signal.SIGCONT)
    time.sleep(0.05)
    assert svc.stop() == 0                         # SIGTERM while thousands are queued
    first = svc.stats()["readings"]
    assert first < n, "no backlog at the SIGTERM: the test proves nothing"
    svc = Serve(daphnet_bundle, broker.address, tmp_path, *args)
    got = by_tick(sub.wait("forecasts/n1", n, timeout=60, distinct=lambda m: m["time"]), period)
    assert svc.stop() == 0
    assert sorted(got) == list(range(n)), f"lost ticks: {sorted(set(range(n)) - set(got))[:10]}"
    np.testing.assert_allclose(values([got[i] for i in range(n)]), want[:, :len(got[0]["forecast"])],
                               rtol=REL, atol=atol_of(daphnet_bundle))
    sub.close(), pub.loop_stop()


# -- case 7: a burst the broker drops shows up as missing periods --------------------------------
def test_a_burst_stock_mosquitto_drops_is_counted_as_missing_periods(daphnet_bundle, tmp_path):
    broker = LoopbackMosquitto(str(tmp_path), stock_limits=True)
    try:
        period = period_of(daphnet_bundle)
        n, tail = 5000, 100
        features, x = readings(daphnet_bundle, n + tail)
        svc = Serve(daphnet_bundle, broker.address, tmp_path, "--streams", "4", "--stats-every", "0.3")
        pub = publisher(broker.address)
        svc.proc.send_signal(signal.SIGSTOP)
        publish_rows(pub, features, x[:n], period)             # beyond 1,000 queued: dropped by the broker
        svc.proc.send_signal(signal.SIGCONT)
        time.sleep(1.0)
        publish_rows(pub, features, x[n:], period, start=n)     # the stream goes on after the drop
        end = time.monotonic() + 30
        while sum(svc.stats().get(k, 0) for k in ("readings", "missing_periods")) < n + tail \
                and time.monotonic() < end:
            time.sleep(0.1)
        assert svc.stop() == 0
        s = svc.stats()
        dropped = "Outgoing messages are being dropped" in open(f"{tmp_path}/mosquitto.log").read()
        assert dropped, "mosquitto dropped nothing: the test proves nothing"
        assert s["missing_periods"] > 0
        assert s["readings"] + s["missing_periods"] == n + tail, s
        assert s["per_node"]["n1"]["missing_periods"] == s["missing_periods"]
        pub.loop_stop()
    finally:
        broker.stop()


# -- case 8: a redelivered older message counts once ---------------------------------------------
def test_a_redelivered_older_message_in_the_open_period_counts_once(daphnet_bundle, broker, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 80)
    svc = Serve(daphnet_bundle, broker.address, tmp_path, "--streams", "4", "--period-s", str(4 * period))
    sub = Collector(broker.address, ["forecasts/#"])
    pub = publisher(broker.address)
    infos = []
    for i, row in enumerate(x):
        text = payload(features, row, T0 + i * period)
        infos.append(pub.publish("sensors/a/state", text, qos=1))
        infos.append(pub.publish("sensors/b/state", text, qos=1))
        if i % 4 >= 2:                               # the message before the last one, once more
            infos.append(pub.publish("sensors/b/state", payload(features, x[i - 1], T0 + (i - 1) * period), qos=1))
    for info in infos:
        info.wait_for_publish(10)
    a, b = sub.wait("forecasts/a", 19), sub.wait("forecasts/b", 19)
    svc.wait_for('"duplicates": 40')
    assert svc.stop() == 0
    a, b = sub.json_on("forecasts/a"), sub.json_on("forecasts/b")
    assert len(a) == len(b) >= 19
    np.testing.assert_array_equal(values(a), values(b))
    assert svc.stats()["per_node"]["b"]["duplicates"] == 40
    sub.close(), pub.loop_stop()


# -- cases 11 and 12: no single node moves the clock ---------------------------------------------
def live_nodes(broker, features, x, seconds, period, skew):
    """Publish live readings (event time = now + skew[node]) every period for `seconds`."""
    pub = publisher(broker.address)
    end, i = time.time() + seconds, 0
    while time.time() < end:
        now = time.time()
        for node, ahead in skew.items():
            pub.publish(f"sensors/{node}/state", payload(features, x[i % len(x)], now + ahead), qos=1)
        i += 1
        time.sleep(max(period - (time.time() - now), 0))
    pub.loop_stop()
    return i


def test_one_reading_from_the_future_does_not_jump_the_clock(daphnet_bundle, broker, tmp_path):
    features, x = readings(daphnet_bundle, 100)
    svc = Serve(daphnet_bundle, broker.address, tmp_path, "--streams", "4", "--period-s", "0.1", "--grace-s", "0.3",
                "--stats-every", "0.5")
    attack = publisher(broker.address)
    threading.Timer(1.0, lambda: attack.publish("sensors/evil/state", payload(features, x[0], time.time() + 4.5),
                                                qos=1)).start()
    sent = live_nodes(broker, features, x, 4.0, 0.1, {"h1": 0.0, "h2": 0.0})
    time.sleep(0.6)
    assert svc.stop() == 0
    s = svc.stats()
    assert s["clock_jumps"] == 0 and s["ahead"] == 1, s
    for node in ("h1", "h2"):
        assert s["per_node"][node]["late"] == 0 and s["per_node"][node]["readings"] == sent, s["per_node"]
    attack.loop_stop()


def test_a_node_whose_clock_runs_ahead_does_not_silence_the_others(daphnet_bundle, broker, tmp_path):
    features, x = readings(daphnet_bundle, 100)
    svc = Serve(daphnet_bundle, broker.address, tmp_path, "--streams", "4", "--period-s", "0.1", "--grace-s", "0.3",
                "--stats-every", "0.5")
    sent = live_nodes(broker, features, x, 4.0, 0.1, {"honest": 0.0, "fast": 4.0})
    time.sleep(0.6)
    assert svc.stop() == 0
    s = svc.stats()
    assert s["clock_jumps"] == 0, s
    assert s["per_node"]["honest"]["late"] == 0 and s["per_node"]["honest"]["readings"] == sent, s["per_node"]
    assert s["ahead"] >= sent - 2                       # the fast node's readings: counted and dropped


# -- case 14: slots an attacker cannot take ------------------------------------------------------
def test_junk_node_ids_cannot_take_the_allowlisted_slots(daphnet_bundle, broker, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 20)
    args = ("--streams", "4", "--nodes", "kitchen,garage", "--state-dir", str(tmp_path / "state"))
    svc = Serve(daphnet_bundle, broker.address, tmp_path, *args)
    sub = Collector(broker.address, ["forecasts/#"])
    pub = publisher(broker.address)
    infos = [pub.publish(f"sensors/junk{i}/state", payload(features, x[0], T0), qos=1) for i in range(5000)]
    for info in infos:
        info.wait_for_publish(10)
    publish_rows(pub, features, x[:10], period, node="kitchen")
    sub.wait("forecasts/kitchen", 9)
    svc.wait_for('"refused_readings": 5000')
    assert svc.stop() == 0
    assert svc.stats()["nodes"] == 1
    svc = Serve(daphnet_bundle, broker.address, tmp_path, *args)       # kitchen keeps its stream after a restart
    svc.wait_for("restored the state of 1 stream")
    publish_rows(pub, features, x[10:], period, node="kitchen", start=10)
    got = sub.wait("forecasts/kitchen", 19, distinct=lambda m: m["time"])
    assert svc.stop() == 0
    assert len(by_tick(got, period)) >= 19
    sub.close(), pub.loop_stop()


def test_idle_slots_expire_and_are_not_restored(daphnet_bundle, broker, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 20)
    args = ("--streams", "2", "--slot-idle-s", "1", "--state-dir", str(tmp_path / "state"), "--stats-every", "0.3")
    svc = Serve(daphnet_bundle, broker.address, tmp_path, *args)
    sub = Collector(broker.address, ["forecasts/#"])
    pub = publisher(broker.address)
    for i in range(50):                                  # junk takes both slots ...
        pub.publish(f"sensors/junk{i}/state", payload(features, x[0], T0), qos=1).wait_for_publish(10)
    svc.wait_for('"refused_readings": 48')
    assert svc.stop() == 0
    time.sleep(1.5)                                      # ... and is idle past slot_idle_s at the restart
    svc = Serve(daphnet_bundle, broker.address, tmp_path, *args)
    publish_rows(pub, features, x[:10], period, node="kitchen")
    sub.wait("forecasts/kitchen", 9)
    svc.wait_for('"nodes": 1')
    assert svc.stop() == 0
    s = svc.stats()
    assert s["expired_slots"] == 2 and s["refused_readings"] == 0 and "kitchen" in s["per_node"], s
    sub.close(), pub.loop_stop()


# -- case 16: look-alike node ids get their own Home Assistant entity ---------------------------
def test_home_assistant_object_ids_are_unique_per_node(daphnet_bundle, broker, tmp_path):
    period = period_of(daphnet_bundle)
    features, x = readings(daphnet_bundle, 3)
    nodes = ["é", "ü", "a.b", "a_b", "a b"]
    sub = Collector(broker.address, ["homeassistant/#"])
    svc = Serve(daphnet_bundle, broker.address, tmp_path, "--streams", "8", "--homeassistant")
    pub = publisher(broker.address)
    for node in nodes:
        publish_rows(pub, features, x, period, node=node)
    end = time.monotonic() + 20
    while len(sub.json_on("homeassistant/")) < len(nodes) and time.monotonic() < end:
        time.sleep(0.05)
    assert svc.stop() == 0
    topics = {t for t, _, _ in sub.messages if t.startswith("homeassistant/")}
    configs = sub.json_on("homeassistant/")
    assert len(topics) == len(nodes) and len({c["unique_id"] for c in configs}) == len(nodes), topics
    sub.close(), pub.loop_stop()
