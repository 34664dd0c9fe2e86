"""`python -m bench.cluster`: a local Ray cluster of one-CPU nodes, and what it buys.

Starts a head node and more worker nodes as separate `ray start --block` processes on
127.0.0.1 (two raylets: two "machines" on one workstation), then measures in one run:
- the fan-out of 4 equal trainings over the nodes vs the same 4 one after another in this process;
- one worker's training throughput (optimizer steps and readings per second),
and projects from it one epoch of a global model over 1,000 series x 50,000 readings and 1,000
per-series trainings on 8 nodes x 8 cores. Writes bench/cluster.json and prints a summary.
The tests start their cluster with `LocalCluster` too, and stop it by the processes it started.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench.broker import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def loopback_only() -> bool:
    """True in a network namespace whose only interface is the loopback. Ray advertises the host's
    own address (and binds some servers to it) even with --node-ip-address 127.0.0.1, so a local
    cluster is started only where nothing but the loopback exists."""
    import socket
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def in_loopback_namespace(argv: list) -> list:
    """argv run in a new network namespace with only the loopback up (`unshare -n`, root)."""
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *argv]


class LocalCluster:
    """A head node and `workers` more nodes, each a `ray start --block` process with `cpus` CPUs on
    127.0.0.1, sharing a short temporary folder. `stop()` (or leaving the `with`) ends exactly the
    processes it started; each takes its raylet, store and workers down with it."""

    def __init__(self, workers: int = 1, cpus: int = 1, port: int | None = None):
        if not loopback_only():
            raise RuntimeError("a local Ray cluster runs only in a loopback-only network namespace (Ray advertises "
                               "the host's own address otherwise): run it under `unshare -n` (make test and "
                               "python -m bench.cluster do)")
        self.port, self.cpus = port or free_port(), cpus
        self.temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: socket paths are limited to 107 bytes
        self.nodes: list[subprocess.Popen] = []
        self.address = f"127.0.0.1:{self.port}"
        try:
            self._start("--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--temp-dir", self.temp)
            self.wait_for_nodes(1)
            for _ in range(workers):
                self.add_node()
        except BaseException:
            self.stop()
            raise

    def _start(self, *args) -> subprocess.Popen:
        log = open(os.path.join(self.temp, f"node{len(self.nodes)}.log"), "w")
        # no 30 s drain on SIGTERM (it waits for Serve replicas to migrate; there are none here)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        p = subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus",
                              str(self.cpus), "--disable-usage-stats", *args], stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        self.nodes.append(p)
        return p

    def add_node(self) -> subprocess.Popen:
        """One more worker node (a raylet of its own); returns its `ray start` process."""
        p = self._start("--address", self.address)
        self.wait_for_nodes(len(self.nodes))
        return p

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> None:
        """Until the head's GCS lists `n` live nodes (a node is up once its raylet has registered)."""
        from ray._raylet import GcsClient   # a plain client: this process does not join the cluster
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p.args for p in self.nodes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"ray start exited early: {dead[0]}; see {self.temp}/node*.log")
            try:
                alive = [v for v in GcsClient(address=self.address).get_all_node_info(timeout=5).values()
                         if v.state == 0]
                if len(alive) >= n:
                    return
            except Exception:    # the GCS is not up yet
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the local Ray cluster at {self.address} did not reach {n} nodes in {timeout:.0f} s")

    def processes(self, node: subprocess.Popen | None = None) -> list[tuple[int, str]]:
        """(pid, command) of every process in the sessions of the nodes this started, or of one node:
        its `ray start`, GCS, raylet and agents, and its task workers, which have process groups of
        their own but stay in the node's session."""
        sessions = {str(p.pid) for p in ([node] if node else self.nodes)}
        out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
        rows = [line.split(None, 2) for line in out.splitlines()]
        return [(int(r[0]), r[2] if len(r) > 2 else "") for r in rows if len(r) > 1 and r[1] in sessions]

    def _kill(self, node: subprocess.Popen | None = None) -> None:
        for pid, _ in self.processes(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill_node(self, p: subprocess.Popen) -> None:
        """End one node as a crash of its machine would: SIGKILL to every process of its session
        (the raylet and its task workers, which would otherwise finish their task and reply)."""
        self._kill(p)
        p.wait()

    def stop(self) -> None:
        """SIGTERM to each `ray start` this started (workers first; it stops its node's processes),
        then SIGKILL to whatever of their sessions is left."""
        for p in reversed(self.nodes):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.nodes):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self._kill()
        for p in self.nodes:
            p.wait()
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _jobs(spec, epochs: int, seeds) -> list:
    from train.cluster import Job
    from train.fit import TrainConfig
    from train.pipeline import ModelSpec
    return [Job({"seed": s}, spec, ModelSpec(), TrainConfig(epochs=epochs, patience=epochs + 1, seed=s))
            for s in seeds]


def rates(data, fitted, tc, members: int) -> dict:
    """A fitted run's training throughput: readings of the training split consumed per second (each
    epoch's validation pass included) and optimizer steps per second (one step: `batch` pieces per
    member, one `window` of readings each)."""
    train_rows = int(sum(b - a for a, b in data.splits["train"]))
    readings = train_rows * len(fitted.history)
    steps = readings / (tc.batch * tc.window)
    return {"train_rows": train_rows, "epochs": len(fitted.history), "fit_seconds": fitted.seconds,
            "readings_per_s": readings / fitted.seconds, "steps_per_s": steps / fitted.seconds,
            "batch": tc.batch, "window": tc.window, "members": members}


def fan_out(address: str, spec, epochs: int, n: int = 4) -> dict:
    """n equal trainings (seeds 0..n-1): one after another here, then as tasks over the cluster."""
    from train.cluster import run_jobs
    from train.pipeline import load_prepared
    data = load_prepared(spec)
    t0 = time.perf_counter()
    here = run_jobs(_jobs(spec, epochs, range(n)), None, {spec: data})
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    there = run_jobs(_jobs(spec, epochs, range(n)), address, {spec: data})
    cluster = time.perf_counter() - t0
    same = all(a.run.fit.best_val == b.run.fit.best_val for a, b in zip(here, there))
    o = here[0]
    return {"trainings": n, "epochs": epochs, "sequential_s": sequential, "cluster_s": cluster,
            "ratio": cluster / sequential, "nodes_used": len({x.node for x in there}), "same_val_losses": same,
            "task_seconds": {"sequential": [x.seconds for x in here], "cluster": [x.seconds for x in there],
                             "fit_sequential": [x.run.fit.seconds for x in here],
                             "fit_cluster": [x.run.fit.seconds for x in there]},
            "single": rates(data, o.run.fit, o.job.train, o.run.model.cfg.members)}


def data_parallel(address: str, spec, epochs: int, seeds, workers: int = 2) -> list[dict]:
    """Per seed: the single-process run and the `workers`-worker Ray Train run, their streamed test MAE."""
    from train.cluster import train_data_parallel
    from train.pipeline import load_prepared, train_once
    data = load_prepared(spec)
    rows = []
    for job in _jobs(spec, epochs, seeds):
        one = train_once(data, job.model, job.train, progress=False)
        dp = train_data_parallel(data, spec, job.model, job.train, address, workers,
                                 tempfile.mkdtemp(prefix="dp", dir="/tmp"))
        mae = [r.evaluation["models"]["GRU streamed"]["mae"] for r in (one, dp)]
        rows.append({"seed": job.train.seed, "single_mae": mae[0], "data_parallel_mae": mae[1],
                     "mae_ratio": mae[1] / mae[0], "single": rates(data, one.fit, job.train, one.model.cfg.members),
                     "data_parallel": rates(data, dp.fit, job.train, dp.model.cfg.members)})
        print(f"data-parallel seed {job.train.seed}: streamed test MAE {mae[1]:.5g} vs one process {mae[0]:.5g} "
              f"({100 * (mae[1] / mae[0] - 1):+.2f}%)", flush=True)
    return rows


# The scale on paper: 8 nodes x 8 cores, one worker per core. The network figures are assumptions
# (gloo over TCP on a 10 Gb/s LAN), not measurements: say so wherever they are used.
NODES, CORES = 8, 8
SERIES, READINGS = 1_000, 50_000
LATENCY_S = 100e-6           # one message hop between nodes
BANDWIDTH_BPS = 1.25e9       # bytes per second (10 Gb/s)


def project(single: dict, dp: dict | None, parameters: int, epochs_per_model: float) -> dict:
    """One epoch of a global model over SERIES x READINGS readings, and SERIES per-series trainings,
    on NODES x CORES workers, from the measured one-worker throughput."""
    workers = NODES * CORES
    t_step = 1 / single["steps_per_s"]                           # one worker, one step of the measured batch
    one_model = epochs_per_model * 0.7 * READINGS / single["readings_per_s"]
    waves = -(-SERIES // workers)
    # global model: every worker walks the measured batch (`batch` pieces per member, one window
    # each) per step, so the global batch is workers x that (train --batch workers x batch)
    steps = SERIES * READINGS / (workers * single["batch"] * single["window"])
    ring = 2 * (workers - 1) * LATENCY_S                          # latency of one ring all-reduce
    allreduce = 2 * ring + 2 * 4 * parameters / BANDWIDTH_BPS     # the loss and the gradients, each step
    out = {"workers": workers, "per_series": {
        "one_training_s": one_model, "waves": waves, "total_s": waves * one_model,
        "one_core_s": SERIES * one_model, "bottleneck": "compute (independent trainings; the driver only collects "
                                                       f"{SERIES} small results, each task reads one series)"},
        "global_epoch": {"steps": steps, "compute_per_step_s": t_step, "allreduce_per_step_s": allreduce,
                         "epoch_s": steps * (t_step + allreduce), "one_core_epoch_s": SERIES * READINGS / single["readings_per_s"],
                         "bottleneck": "all-reduce latency" if allreduce > t_step else "compute"}}
    if dp:   # measured: 2 replicas on loopback, each half the batch; the extra is all-reduce waits on a busy
        # machine plus the validation pass that every replica repeats each epoch
        out["dp2_extra_per_step_s"] = 1 / dp["steps_per_s"] - t_step / 2
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument("--data", default="appliances", help="a bundled data set or a CSV path")
    p.add_argument("--epochs", type=int, default=40,
                   help="epochs of each of the 4 fanned-out trainings (about a real training's length: early "
                        "stopping ended the bundled sets' runs after 38-88 epochs)")
    p.add_argument("--runs", type=int, default=3, help="how many times to measure the fan-out (each run alone "
                                                       "is a measurement of the goal; the machine is noisy)")
    p.add_argument("--quality-epochs", type=int, default=5, help="epochs of the data-parallel quality runs (0: skip)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the data-parallel quality runs")
    p.add_argument("--epochs-per-model", type=float, default=60.0,
                   help="epochs of one per-series training in the projection (early stopping ended the bundled "
                        "sets' runs after 38-88: bench/datasets.md)")
    a = p.parse_args(argv)
    if not loopback_only():                  # the measurement's two nodes stay on a loopback of their own
        return subprocess.run(in_loopback_namespace([sys.executable, "-m", "bench.cluster",
                                                     *(sys.argv[1:] if argv is None else argv)]),
                              cwd=os.path.dirname(HERE)).returncode
    from train.pipeline import DataSpec
    spec = DataSpec(a.data)
    with LocalCluster(workers=1, cpus=1) as cluster:
        print(f"cluster: 2 nodes x 1 CPU at {cluster.address}", flush=True)
        fans = []
        for run in range(a.runs):
            fans.append(fan_out(cluster.address, spec, a.epochs))
            f = fans[-1]
            print(f"fan-out of 4, run {run + 1}/{a.runs}: {f['cluster_s']:.1f} s on the cluster vs "
                  f"{f['sequential_s']:.1f} s one after another ({f['ratio']:.2f}x; goal <= 0.65x)", flush=True)
        quality = (data_parallel(cluster.address, spec, a.quality_epochs, [int(s) for s in a.seeds.split(",")])
                   if a.quality_epochs else [])
    from train.model import count_parameters
    from train.pipeline import ModelSpec, new_model, load_prepared
    from train.fit import TrainConfig
    params = count_parameters(new_model(load_prepared(spec), ModelSpec(), TrainConfig()))
    proj = project(fans[0]["single"], quality[0]["data_parallel"] if quality else None, params, a.epochs_per_model)
    meta = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "data": a.data, "parameters": params,
            "fan_out": fans, "data_parallel": quality, "projection": proj,
            "assumptions": {"latency_s": LATENCY_S, "bandwidth_Bps": BANDWIDTH_BPS}}
    with open(os.path.join(HERE, "cluster.json"), "w") as f:
        json.dump(meta, f, indent=2, default=float)
    print(json.dumps(proj, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
