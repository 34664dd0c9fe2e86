"""Trainings that outgrow one workstation, on a Ray cluster.

- Fan-out (`run_jobs`): independent trainings (grid points, seeds, data sets), each a Ray task
  that reads its data from a path every node can reach and returns the trained run. The same
  jobs run one after another in this process without a cluster, with the same results.
- Data-parallel (`train_data_parallel`): one model, Ray Train's TorchTrainer on CPU (gloo);
  each worker walks its rows of every batch, and the gradients are summed each step (`Replicas`).

Every node needs this project installed (`pip install gru-edge[cluster]`) and the data at the
same path (a shared folder, or the bundled data sets that ship in packages).
"""
from __future__ import annotations

import functools
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from .fit import Alone, TrainConfig
from .pipeline import DataSpec, ModelSpec, RunResult, load_prepared, train_once


class ClusterError(RuntimeError):
    """The cluster could not be reached, or a task failed on both of its attempts."""


@dataclass(frozen=True)
class Job:
    """One training: what sets it apart (shown in the progress and the table), its data and its settings."""
    key: dict
    data: DataSpec
    model: ModelSpec
    train: TrainConfig


@dataclass
class Outcome:
    job: Job
    run: RunResult
    node: str = "local"      # the Ray node id of the task that finished it
    attempts: int = 1        # 2: its first worker died and it ran again
    seconds: float = 0.0     # wall-clock on the worker
    lost: list = field(default_factory=list)   # the errors of failed attempts


def ray_address(flag: str | None, environ=os.environ) -> str | None:
    """The cluster to use: --ray's value (an address, or `auto`), else RAY_ADDRESS, else None (run here)."""
    return flag or environ.get("RAY_ADDRESS") or None


def _probe(address: str, timeout: float = 5.0) -> None:
    """Refuse a HOST:PORT where nothing listens at once (ray.init would retry it for minutes);
    `auto` is the cluster the last `ray start` on this machine recorded."""
    given = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address
        try:
            address = canonicalize_bootstrap_address(address) or address
        except Exception:       # nothing recorded: ray.init says so
            return
    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        where = repr(given) + (f" ({address})" if given != address else "")
        raise ClusterError(f"cannot reach the Ray cluster at {where}: {e.strerror or e}; start one with "
                           "`ray start --head` or give the head node's HOST:PORT") from None


@contextmanager
def connected(address: str):
    """This process as the driver of the Ray cluster at `address` for the duration."""
    import ray
    _probe(address)
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r} ({str(e).splitlines()[0]}); "
                           "start one with `ray start --head` or give its address as HOST:PORT") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def reachable(spec: DataSpec) -> DataSpec:
    """The spec with a file path made absolute, so a worker with another working folder finds it."""
    return replace(spec, data=os.path.abspath(spec.data)) if os.path.exists(spec.data) else spec


@functools.lru_cache(maxsize=4)
def _worker_data(spec: DataSpec):
    """On a worker: the data of `spec`, read once per worker process (it stays for the next task)."""
    return load_prepared(spec)


class Progress:
    """One line per finished training, with the running best validation loss."""

    def __init__(self, total: int, say=print):
        self.total, self.done, self.best, self.say = total, 0, None, say

    def finished(self, o: Outcome) -> None:
        self.done += 1
        val = o.run.fit.best_val
        if self.best is None or val < self.best[0]:
            self.best = (val, o.job.key)
        where = "" if o.node == "local" else f" on node {o.node[:8]}"
        again = f", attempt {o.attempts} (lost: {'; '.join(o.lost)})" if o.attempts > 1 else ""
        self.say(f"[{self.done}/{self.total}] {_key(o.job.key)}: val_loss {val:.5f}{where} ({o.seconds:.1f} s{again}); "
                 f"best {self.best[0]:.5f} ({_key(self.best[1])})", flush=True)


def _key(key: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in key.items())


def run_jobs(jobs: list[Job], address: str | None = None, loaded: dict | None = None, say=print) -> list[Outcome]:
    """Train every job; returns the outcomes in job order.

    address None: one after another in this process. Otherwise each job is a task on the Ray
    cluster at `address` (one CPU each) that reads its data itself; a task whose worker or node
    dies runs once more; Ctrl-C cancels the tasks still on the cluster. Either way each run's
    `data` is this process's copy: `loaded` ({DataSpec: prepared data}), else read here.
    """
    loaded = dict(loaded or {})

    def data(spec):
        if spec not in loaded:
            loaded[spec] = load_prepared(spec)
        return loaded[spec]

    progress = Progress(len(jobs), say)
    if address is None:
        out = []
        for job in jobs:
            t0 = time.perf_counter()
            out.append(Outcome(job, train_once(data(job.data), job.model, job.train, progress=False),
                               seconds=time.perf_counter() - t0))
            progress.finished(out[-1])
        return out
    with connected(address) as ray:
        out = _on_ray(ray, jobs, progress)
    for o in out:
        o.run.data = data(o.job.data)
    return out


def _train_task(job: Job):
    """On a worker: one training; its run without the data (the driver has its own copy)."""
    import ray
    t0 = time.perf_counter()
    run = train_once(_worker_data(job.data), job.model, job.train, progress=False)
    run.data = None
    return run, ray.get_runtime_context().get_node_id(), time.perf_counter() - t0


def _on_ray(ray, jobs: list[Job], progress: Progress) -> list[Outcome]:
    """Submit every job, collect them as they finish, retry a lost one once, cancel all on Ctrl-C."""
    task = ray.remote(num_cpus=1, max_retries=0)(_train_task)   # retries are ours: the table counts them
    sent = [replace(j, data=reachable(j.data)) for j in jobs]
    pending = {task.remote(j): (i, 1, []) for i, j in enumerate(sent)}
    out: list = [None] * len(jobs)
    try:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, attempt, lost = pending.pop(ref)
            try:
                run, node, seconds = ray.get(ref)
            except ray.exceptions.RayTaskError as e:       # the training itself raised: no retry
                raise (e.cause if isinstance(e.cause, Exception) else ClusterError(str(e))) from None
            except ray.exceptions.RayError as e:           # its worker or node died
                lost = lost + [type(e).__name__]
                if attempt >= 2:
                    raise ClusterError(f"{_key(jobs[i].key)}: lost twice ({', '.join(lost)})") from None
                progress.say(f"  {_key(jobs[i].key)}: {type(e).__name__}; running it again", flush=True)
                pending[task.remote(sent[i])] = (i, attempt + 1, lost)
                continue
            out[i] = Outcome(jobs[i], run, node, attempt, seconds, lost)
            progress.finished(out[i])
    except BaseException as e:         # Ctrl-C, or a training that failed: nothing keeps running
        if pending:                    # (a finished task is not cancelled: that races its reply in Ray 2.60)
            _, running = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in running:
                ray.cancel(ref, force=True)
        if isinstance(e, KeyboardInterrupt):
            progress.say(f"\ninterrupted: cancelled {len(pending)} task(s) on the cluster", flush=True)
            _leave_now(130)
        raise
    return out


def _leave_now(code: int) -> None:
    """Exit at once after Ctrl-C. Ray 2.60's core worker can abort the driver (exit 1, "Tried to
    complete task that was not pending") when a force-cancelled task's reply arrives while it shuts
    down (seen once in a fresh-clone CI run); the tasks are cancelled and die with their owner."""
    print("interrupted", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


class Replicas(Alone):
    """A data-parallel worker's part of each batch (rows rank, rank + size, ...) and the gloo
    all-reduces that keep every replica equal: each worker's loss is divided by the whole batch's
    loss count, so the summed gradient is the whole batch's, and every replica takes the same step."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size

    def rows(self, n: int):
        import torch
        return torch.arange(self.rank, n, self.size)

    def total(self, loss):
        import torch.distributed as dist
        t = loss.detach().clone().reshape(1)
        dist.all_reduce(t)
        return t[0]

    def reduce(self, model) -> None:
        import torch
        import torch.distributed as dist
        params = list(model.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat)                                       # one all-reduce per optimizer step
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p).clone()

    def any(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def _replica_loop(config: dict) -> None:
    """On each Ray Train worker: the same seeded model, fitted on this worker's rows; rank 0 reports
    the weights and the fit's history as a Ray Train checkpoint."""
    import json
    import ray.train
    import torch
    from .fit import fit
    from .pipeline import new_model
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    data = _worker_data(config["data"])
    model = new_model(data, config["model"], config["train"], base=config.get("base"))
    result = fit(model, data, config["train"], progress=rank == 0, share=Replicas(rank, ctx.get_world_size()))
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            torch.save(model.state_dict(), os.path.join(d, "state.pt"))
            with open(os.path.join(d, "fit.json"), "w") as f:
                json.dump(result.__dict__, f)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"best_val": result.best_val}, checkpoint=checkpoint)


def train_data_parallel(data, spec: DataSpec, ms: ModelSpec, tc: TrainConfig, address: str, workers: int,
                        storage: str, progress: bool = True) -> RunResult:
    """One model trained by `workers` Ray Train workers (TorchTrainer, CPU, gloo), then finished here
    like a single-process run (deadband, test evaluation): the same checkpoint, metrics and bundle,
    and with --base auto the same second training from the AR base where the level's model loses to
    it on validation (train/pipeline.second_base), data-parallel too.

    `storage`: a folder every node can reach, where Ray Train keeps the run and its checkpoint
    until this has read it back (then the folder is removed).
    """
    from .pipeline import second_base
    run = _data_parallel_once(data, spec, ms, tc, address, workers, storage)
    if ms.base != "auto":
        return run
    return second_base(run, ms, tc, progress,
                       refit=lambda ar, t: _data_parallel_once(data, spec, ms, t, address, workers, storage, ar))


def _data_parallel_once(data, spec: DataSpec, ms: ModelSpec, tc: TrainConfig, address: str, workers: int,
                        storage: str, base=None) -> RunResult:
    """One data-parallel training from `base` (None: the one ms.base chooses), finished here."""
    import json
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from .fit import FitResult
    from .pipeline import finish, new_model
    with connected(address) as ray:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers:
            raise ClusterError(f"--workers {workers}: the cluster at {address} has {cpus:g} CPU(s); "
                               f"expected at least one per worker")
        trainer = TorchTrainer(
            _replica_loop, train_loop_config={"data": reachable(spec), "model": ms, "train": tc, "base": base},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name=time.strftime("train-%Y%m%d-%H%M%S"), storage_path=os.path.abspath(storage),
                                 failure_config=FailureConfig(max_failures=1),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)))
        try:
            result = trainer.fit()
        except Exception as e:
            raise ClusterError(f"data-parallel training failed: {str(e).splitlines()[0]}") from None
        with result.checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), weights_only=True)
            with open(os.path.join(d, "fit.json")) as f:
                fitted = FitResult(**json.load(f))
    shutil.rmtree(storage, ignore_errors=True)
    model = new_model(data, ms, tc, base=base)
    model.load_state_dict(state)
    return finish(model, data, ms, fitted)
