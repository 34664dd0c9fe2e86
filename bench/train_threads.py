"""`python -m bench.train_threads`: seconds per training epoch at 1 and 2 torch threads, on an idle
machine and beside one and two CPU-bound processes (the machine a user trains on is rarely idle).

The default model (hidden 64 as four members of 16) on the bundled demo data, three epochs per
setting; the mean epoch time includes the streamed validation pass. Writes bench/train_threads.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def epoch_seconds(data, threads: int, epochs: int = 3) -> float:
    from train.fit import TrainConfig
    from train.pipeline import ModelSpec, train_once
    run = train_once(data, ModelSpec(), TrainConfig(epochs=epochs, threads=threads, patience=epochs + 1), progress=False)
    return run.fit.seconds / len(run.fit.history)


def main(out: str = os.path.join(os.path.dirname(__file__), "train_threads.json")) -> dict:
    from train.pipeline import DataSpec, load_prepared
    data = load_prepared(DataSpec("appliances"))
    rows = []
    for busy in (0, 1, 2):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(1.0)
            for threads in (1, 2):
                s = epoch_seconds(data, threads)
                rows.append({"busy_cores": busy, "threads": threads, "seconds_per_epoch": round(s, 3)})
                print(f"{busy} busy core(s), {threads} thread(s): {s:.2f} s per epoch", flush=True)
        finally:
            for p in hogs:
                p.kill()
    result = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "rows": rows}
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
