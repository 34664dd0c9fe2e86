"""A real Ray cluster on loopback: a head node and a worker node, each a `ray start` process of
one CPU (two raylets: two "machines"), started once for this file and stopped by the processes
it started. Fan-out (search, seeds), failure (a node killed mid-search), Ctrl-C, and
data-parallel training (Ray Train, gloo) against the single-process run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_module, sensor_frame

pytest.importorskip("ray")
from bench.cluster import LocalCluster, loopback_only  # noqa: E402

TINY = ("--target", "temp", "--hidden", "8")
GRID = "hidden_size=8;num_layers=1;dropout=0;lr=0.002,0.005;members=1,2"
SHARED = ("node", "attempts")     # where a task ran: only in a cluster run's table


def _ray_processes(cluster, node=None) -> list[str]:
    return [command for _, command in cluster.processes(node)]


@pytest.fixture(scope="module")
def cluster():
    if not loopback_only():
        pytest.skip("the Ray cluster tests run in a loopback-only network namespace: make test runs this file "
                    "under `unshare -n` (Ray advertises the host's own address otherwise)")
    c = LocalCluster(workers=1, cpus=1)
    yield c
    c.stop()
    deadline = time.monotonic() + 10
    while _ray_processes(c) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(c), "left running:\n" + "\n".join(_ray_processes(c))


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sensor.csv"
    sensor_frame(n=1500).to_csv(path, index=False)
    return str(path)


def _without(rows, keys=SHARED):
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


def _same_rows(a, b, rel=1e-6):
    assert [r.keys() for r in _without(a)] == [r.keys() for r in _without(b)]
    for x, y in zip(_without(a), _without(b)):
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=rel), (k, x, y)


@pytest.fixture(scope="module")
def local_search(csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "s.pt"
    p = run_module("train", "--data", csv, *TINY, "--epochs", "2", "--search", GRID, "--out", str(out))
    return json.load(open(str(out)[:-3] + ".search.json")), p.stdout


def test_search_over_the_cluster_gives_the_local_table(cluster, csv, local_search, tmp_path):
    out = tmp_path / "s.pt"
    p = run_module("train", "--data", csv, *TINY, "--epochs", "2", "--search", GRID, "--ray", cluster.address,
                   "--out", str(out))
    rows = json.load(open(tmp_path / "s.search.json"))
    _same_rows(rows, local_search[0])                         # same order: the same best configuration
    assert all(r["attempts"] == 1 for r in rows)
    done = [line for line in p.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in done] == ["[1/4", "[2/4", "[3/4", "[4/4"] and all("best " in line for line in done)
    assert "no task was retried" in (tmp_path / "s.search.md").read_text()
    saved = json.load(open(tmp_path / "s.metrics.json"))["metrics"]     # the best grid point is saved
    assert saved["best_val_loss"] == pytest.approx(rows[0]["val_loss"], rel=1e-6)


def test_seeds_run_across_both_nodes_and_match_the_local_runs(cluster, csv, tmp_path):
    run_module("train", "--data", csv, *TINY, "--epochs", "2", "--seeds", "0,1,2", "--out", str(tmp_path / "l.pt"))
    run_module("train", "--data", csv, *TINY, "--epochs", "2", "--seeds", "0,1,2", "--out", str(tmp_path / "c.pt"),
               env={"RAY_ADDRESS": cluster.address})                 # the address from the environment
    local, remote = (json.load(open(tmp_path / f"{s}.seeds.json")) for s in ("l", "c"))
    assert [r["seed"] for r in remote] == [0, 1, 2]
    timing = ("train_seconds",)
    _same_rows(_without(remote, timing), _without(local, timing))
    assert len({r["node"] for r in remote}) == 2                       # both raylets ran seeds
    assert all(os.path.exists(tmp_path / f"c_s{s}.pt") for s in (0, 1, 2))


def test_data_parallel_two_workers_train_within_two_percent_of_one_process(cluster, csv, tmp_path):
    from train.checkpoint import load_checkpoint
    args = ("--data", csv, *TINY, "--epochs", "3", "--seed", "1")
    run_module("train", *args, "--out", str(tmp_path / "one.pt"))
    run_module("train", *args, "--ray", cluster.address, "--workers", "2", "--out", str(tmp_path / "dp.pt"))
    (_, one), (_, dp) = load_checkpoint(str(tmp_path / "one.pt")), load_checkpoint(str(tmp_path / "dp.pt"))
    assert dp.keys() == one.keys() and dp["config"] == {**one["config"], "deadband": dp["config"]["deadband"]}
    assert len(dp["history"]) == len(one["history"]) == 3
    mae = [ck["metrics"]["test"]["GRU streamed"]["mae"] for ck in (dp, one)]
    assert abs(mae[0] / mae[1] - 1) <= 0.02, mae
    assert not os.path.exists(tmp_path / "dp.ray")                  # Ray Train's run folder is not left behind


def test_data_parallel_trains_again_from_the_ar_base_where_the_level_loses(cluster, tmp_path):
    """--base auto above SMALL_DATA_ROWS, data-parallel: a level model that loses to the AR base alone
    on validation is trained again from that base on the workers, as in one process (before, the
    data-parallel run kept the level's model unasked)."""
    from test_base import _daily
    from train.base import SMALL_DATA_ROWS
    from train.checkpoint import load_checkpoint
    csv = tmp_path / "daily.csv"
    _daily(n=int(SMALL_DATA_ROWS / 0.7) + 500).to_csv(csv, index=False)
    p = run_module("train", "--data", str(csv), "--target", "temp", "--calendar", "none", "--hidden", "4",
                   "--members", "1", "--horizon", "3", "--epochs", "1", "--ray", cluster.address, "--workers", "2",
                   "--out", str(tmp_path / "dp.pt"))
    assert "base alone on validation at step(s)" in p.stdout and "training from that base too" in p.stdout
    _, ck = load_checkpoint(str(tmp_path / "dp.pt"))
    choice = ck["metrics"]["base_choice"]
    assert choice["kept"] == ck["metrics"]["base"] != "level"
    assert sum(choice["from_base_val_mae"]) < sum(choice["level_val_mae"])


def test_data_parallel_refuses_more_workers_than_cpus(cluster, csv):
    p = run_module("train", "--data", csv, *TINY, "--ray", cluster.address, "--workers", "3", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--workers 3: the cluster at" in p.stderr and "has 2 CPU(s)" in p.stderr
    p = run_module("train", "--data", csv, *TINY, "--workers", "2", check=False, env={"RAY_ADDRESS": ""})
    assert p.returncode == 2 and "--workers needs a Ray cluster" in p.stderr
    p = run_module("train", "--data", csv, "--seeds", "0,0", "--search", "", check=False)
    assert p.returncode == 2 and "--seeds '0,0': expected distinct whole numbers >= 0" in p.stderr
    p = run_module("train", "--data", csv, "--seeds", "0,1", "--search", "", check=False)
    assert p.returncode == 2 and "--search and --seeds: expected one of them per run" in p.stderr


def _as_from_a_terminal():
    """Ctrl-C reaches the command as it does from a terminal: a suite started in the background (a
    non-interactive shell's `&`, some CI runners) ignores SIGINT, and the children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _search(cluster, csv, out, epochs):
    """A search of four longer trainings over the cluster, as a process of its own."""
    return subprocess.Popen([sys.executable, "-u", "-m", "train", "--data", csv, *TINY, "--epochs", str(epochs),
                             "--patience", "100", "--base", "level", "--search", GRID, "--ray", cluster.address,
                             "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)


def _search_until_first_result(cluster, csv, out, epochs):
    """The search of `_search`; returns the process once one task has finished."""
    p, lines = _search(cluster, csv, out, epochs), []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("[1/4]"):
            return p, lines
    raise AssertionError(f"no task finished: {''.join(lines)} {p.stderr.read()}")


def test_ctrl_c_cancels_the_tasks_on_the_cluster(cluster, csv, tmp_path):
    p, _ = _search_until_first_result(cluster, csv, tmp_path / "s.pt", epochs=120)  # seconds a task on warm workers: tasks are left at the signal
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "interrupted: cancelled" in out and "task(s) on the cluster" in out
    deadline = time.monotonic() + 15
    while any("ray::_train_task" in line for line in _ray_processes(cluster)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any("ray::_train_task" in line for line in _ray_processes(cluster))


def test_killing_a_worker_node_mid_search_retries_its_task(cluster, csv, tmp_path):
    from train.cluster import Job, run_jobs
    from train.fit import TrainConfig
    from train.pipeline import DataSpec, ModelSpec
    extra = cluster.add_node()                        # a third node, so that two remain after the kill
    p = _search(cluster, csv, tmp_path / "s.pt", epochs=15)
    deadline = time.monotonic() + 60
    while not any("ray::_train_task" in c for c in _ray_processes(cluster, extra)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert p.poll() is None and time.monotonic() < deadline, ("no task ran on the extra node", p.communicate())
    cluster.kill_node(extra)                          # mid-task: its raylet and its task's worker die
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    rows = json.load(open(tmp_path / "s.search.json"))
    assert len(rows) == 4
    again = [r for r in rows if r["attempts"] == 2]
    assert len(again) == 1 and "running it again" in out
    assert "1 task(s) retried once" in (tmp_path / "s.search.md").read_text()
    r = again[0]                                      # the retried task's result is the local one
    [local] = run_jobs([Job({}, DataSpec(csv, "temp"), ModelSpec(8, 1, 0.0, members=r["members"], base="level"),
                            TrainConfig(epochs=15, patience=100, lr=r["lr"]))], say=lambda *a, **k: None)
    assert r["val_loss"] == pytest.approx(local.run.fit.best_val, rel=1e-6)


def test_an_unreachable_cluster_is_one_line_at_once(csv):
    """ray.init retried a closed port for minutes, and `auto` followed a stale ray_current_cluster."""
    p = run_module("train", "--data", csv, *TINY, "--seeds", "0,1", "--ray", "127.0.0.1:1", check=False, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Ray cluster at '127.0.0.1:1'")


def test_a_training_that_fails_on_the_cluster_is_its_one_line_error(cluster, csv):
    p = run_module("train", "--data", csv, *TINY, "--seeds", "0", "--lr", "1e30", "--clip", "1e30",
                   "--max-bad-steps", "1", "--ray", cluster.address, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    ours = [line for line in p.stderr.strip().splitlines() if not line.startswith("[")]   # not Ray's own log lines
    assert ours == ["error: 1 non-finite losses or gradients in a row; lower --lr, raise --clip's "
                    "strictness, or check the data for extreme values"], p.stderr
