"""The service under load: a real mosquitto, `runtime serve` and a publisher, all on this machine.

    python -m bench.serve_load BUNDLE [--nodes 1000] [--rate 10] [--seconds 60]
    python -m bench.serve_load BUNDLE --capture [--nodes 1000] [--seconds 60]
    python -m bench.serve_load BUNDLE --shadow CANDIDATE [--nodes 1000] [--seconds 60]

Three runs, each with its own broker:
- `ceiling`: the MQTT client's own limit: a paho subscriber that does nothing (QoS 1), fed the
  same N nodes at `rate` Hz;
- `nodes_1hz`: N nodes at 1 Hz (the issue's load figure);
- `nodes_10hz`: N nodes at `rate` Hz: readings/s sustained, nothing lost, lag, CPU, RSS;
- `overload_stock_broker`: N nodes as fast as the publisher can, into a mosquitto with its stock
  queue limits: what the broker drops shows up in the service's `missing_periods`.

`--capture`: only what capture costs: N nodes at 1 Hz without and with `serve --capture`
(CPU, RSS, bytes per node-period of capture.db, every period captured).
`--shadow CANDIDATE`: only what a shadow costs: N nodes at 1 Hz without and with `serve --shadow`
(CPU, peak RSS, and the same forecasts published).

The service runs its clock at 1 s (--period-s 1, the wall clock) so every second is a tick for
every node. Lags: `period_end_to_forecast` is from the end of a reading's period on the wall
clock to its forecast arriving at a subscriber; the service's own `tick_to_published` is from a
tick closing to its last forecast handed to the broker.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from .broker import LoopbackMosquitto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _client(name: str, broker: str):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    host, port = broker.split(":")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}-{time.time_ns()}")
    c.max_inflight_messages_set(1000)
    c.connect(host, int(port))
    return c


def publish(broker: str, nodes: int, rate: float, seconds: float, payload: dict) -> dict:
    """Every 1/rate s, one reading from each node (rate 0: as fast as possible for `seconds`)."""
    c = _client("load-pub", broker)
    c.loop_start()
    text = json.dumps(payload)
    sent, behind, t0 = 0, 0.0, time.monotonic()
    tick = 0
    while time.monotonic() - t0 < seconds:
        for n in range(nodes):
            c.publish(f"load/n{n}/state", text, qos=1)
        sent += nodes
        tick += 1
        if rate:
            wait = t0 + tick / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                behind = max(behind, -wait)
    while c._out_messages and time.monotonic() - t0 < seconds + 30:     # let the in-flight QoS 1 finish
        time.sleep(0.05)
    c.loop_stop()
    return {"sent": sent, "seconds": round(time.monotonic() - t0, 2), "max_behind_s": round(behind, 3)}


def _publisher(broker, nodes, rate, seconds, payload):
    cmd = [sys.executable, "-m", "bench.serve_load", "--publish", broker, "--nodes", str(nodes), "--rate", str(rate),
           "--seconds", str(seconds), "--payload", json.dumps(payload)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)


class _Counter:
    """A subscriber keeping only arrival times (and each forecast's period)."""

    def __init__(self, broker, topic, parse):
        self.c, self.parse, self.got, self.lock = _client("load-sub", broker), parse, [], threading.Lock()
        self.c.on_message = self._on
        self.c.subscribe(topic, qos=1)
        self.c.loop_start()
        time.sleep(0.3)

    def _on(self, client, userdata, msg):
        now = time.time()
        item = (now, json.loads(msg.payload)["time"]) if self.parse else now
        with self.lock:
            self.got.append(item)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def ceiling(nodes: int, rate: float, seconds: float, payload: dict) -> dict:
    """The same publisher load as a service run, into a paho subscriber that does nothing."""
    with tempfile.TemporaryDirectory() as d:
        b = LoopbackMosquitto(d)
        try:
            sub = _Counter(b.address, "load/+/state", parse=False)
            res = json.loads(_publisher(b.address, nodes, rate, seconds, payload).communicate()[0])
            time.sleep(2.0)
            sub.close()
            t = sub.got
            return {**res, "nodes": nodes, "rate_hz": rate, "received": len(t), "lost": res["sent"] - len(t),
                    "received_per_s": round(len(t) / res["seconds"])}
        finally:
            b.stop()


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024


def nodes_run(bundle: str, nodes: int, rate: float, seconds: float, payload: dict, stock_limits=False,
              capture: bool = False, shadow: str | None = None) -> dict:
    """One run; stock_limits: mosquitto's own queue limits (a burst beyond them is dropped by the
    broker, and must show in the service's `missing_periods`); capture: `serve --capture`."""
    from runtime.times import BundleClock
    parse_time = BundleClock().epoch
    with tempfile.TemporaryDirectory() as d:
        b = LoopbackMosquitto(d, stock_limits=stock_limits)
        extra = ["--capture", "--state-dir", os.path.join(d, "state")] if capture else []
        extra += ["--shadow", shadow, "--state-dir", os.path.join(d, "state")] if shadow else []
        svc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", bundle, "--broker", b.address,
                                "--subscribe", "load/+/state", "--publish", "forecasts/{node}", "--streams",
                                str(nodes), "--period-s", "1", "--grace-s", "0.2", "--stats-every", "5",
                                "--client-id", "load-svc", *extra], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        err = []
        threading.Thread(target=lambda: err.extend(svc.stderr), daemon=True).start()
        try:
            while not any("mqtt: connected" in ln for ln in err):
                time.sleep(0.05)
            sub = _Counter(b.address, "forecasts/+", parse=True)
            cpu0, w0 = _proc_cpu_s(svc.pid), time.monotonic()
            res = json.loads(_publisher(b.address, nodes, rate, seconds, payload).communicate()[0])
            time.sleep(2.0)
            cpu = (_proc_cpu_s(svc.pid) - cpu0) / (time.monotonic() - w0)
            rss = _peak_rss_mb(svc.pid)
            svc.terminate()
            svc.wait(timeout=30)
            sub.close()
            db = os.path.join(d, "state", "capture.db")
            db_bytes = os.path.getsize(db) if capture and os.path.exists(db) else None
        finally:
            b.stop()
    stats = [json.loads(ln[6:]) for ln in err if ln.startswith("stats ")][-1]
    captured = {"captured_rows": stats.get("captured_rows"), "capture_failures": stats.get("capture_failures"),
                "bytes_per_row": round(db_bytes / max(stats.get("captured_rows") or 1, 1), 1) if db_bytes else None}
    lag = np.array([now - (parse_time(t) + 1.0) for now, t in sub.got])
    return {"nodes": nodes, "rate_hz": rate, "seconds": seconds, "published": res["sent"],
            "publisher_max_behind_s": res["max_behind_s"], "readings_per_s": round(stats["readings"] / res["seconds"]),
            "readings_received": stats["readings"], "lost": res["sent"] - stats["readings"] - stats["late"],
            "late": stats["late"], "forecasts": len(sub.got), "ticks": stats["ticks"],
            "missing_periods": stats.get("missing_periods"), "malformed": stats["malformed"],
            "period_end_to_forecast_ms": {"p50": round(1e3 * float(np.percentile(lag, 50)), 1),
                                          "p99": round(1e3 * float(np.percentile(lag, 99)), 1)},
            "service_lag_ms": stats["lag_ms"], "cpu_percent_of_one_core": round(100 * cpu, 1),
            "peak_rss_mb": round(rss, 1), **(captured if capture else {})}


def capture_cost(bundle: str, nodes: int = 1000, seconds: float = 60.0) -> dict:
    """N nodes at 1 Hz without and with capture: the service CPU capture adds, and what it writes."""
    payload = _payload(bundle)
    off = nodes_run(bundle, nodes, 1.0, seconds, payload)
    on = nodes_run(bundle, nodes, 1.0, seconds, payload, capture=True)
    return {"without": off, "with_capture": on,
            "cpu_increase_percent": round(100 * (on["cpu_percent_of_one_core"] / off["cpu_percent_of_one_core"] - 1), 1)}


def shadow_cost(bundle: str, candidate: str, nodes: int = 1000, seconds: float = 60.0) -> dict:
    """N nodes at 1 Hz without and with a shadow beside the live model: the CPU and memory it adds."""
    payload = _payload(bundle)
    off = nodes_run(bundle, nodes, 1.0, seconds, payload)
    on = nodes_run(bundle, nodes, 1.0, seconds, payload, shadow=candidate)
    return {"without": off, "with_shadow": on,
            "cpu_increase_percent": round(100 * (on["cpu_percent_of_one_core"] / off["cpu_percent_of_one_core"] - 1), 1),
            "rss_increase_mb": round(on["peak_rss_mb"] - off["peak_rss_mb"], 1)}


def _payload(bundle: str) -> dict:
    from runtime.bundle import read_manifest
    from runtime.forecaster import training_statistics
    m = read_manifest(bundle)
    mean, _ = training_statistics(m)
    return {f["name"]: round(float(v), 3) for f, v in zip(m["features"], mean)}


def serve_load(bundle: str, nodes: int = 1000, rate: float = 10.0, seconds: float = 60.0) -> dict:
    payload = _payload(bundle)
    out = {"ceiling": ceiling(nodes, rate, min(seconds, 20.0), payload)}
    out["nodes_1hz"] = nodes_run(bundle, nodes, 1.0, seconds, payload)
    out["nodes_10hz"] = nodes_run(bundle, nodes, rate, seconds, payload)
    # Overload: as fast as one publisher can, into a broker with stock limits (1,000 queued per client).
    out["overload_stock_broker"] = nodes_run(bundle, nodes, 0.0, min(seconds, 20.0), payload, stock_limits=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--publish", metavar="BROKER", help="(internal) be the publisher process")
    p.add_argument("--payload", default="{}")
    p.add_argument("--capture", action="store_true", help="only the cost of serve --capture at N nodes x 1 Hz")
    p.add_argument("--shadow", metavar="CANDIDATE", help="only the cost of serve --shadow CANDIDATE at N nodes x 1 Hz")
    a = p.parse_args(argv)
    if a.publish:
        print(json.dumps(publish(a.publish, a.nodes, a.rate, a.seconds, json.loads(a.payload))))
        return 0
    if a.shadow:
        print(json.dumps(shadow_cost(a.bundle, a.shadow, a.nodes, a.seconds), indent=2))
        return 0
    if a.capture:
        print(json.dumps(capture_cost(a.bundle, a.nodes, a.seconds), indent=2))
        return 0
    print(json.dumps(serve_load(a.bundle, a.nodes, a.rate, a.seconds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
