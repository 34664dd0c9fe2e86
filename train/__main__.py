"""`python -m train`: train a GRU forecaster on a sensor CSV (or a bundled dataset)."""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timedelta

from runtime.args import number, prog
from runtime.readings import step_label
from runtime.derived import series_ids
from runtime.times import zone

from .base import BASES, SERIES_BASES
from .calendar import IDENTITY
from .cluster import ClusterError, ray_address
from .data import DATASETS, DataError
from .evaluate import unscorable
from .fit import LOSSES, TrainConfig, TrainingError
from .resample import parse_period
from .table import delimiter_arg
from .pipeline import (UNITS_PER_MEMBER, DataSpec, ModelSpec, RunResult, load_prepared, report_text, save_run,
                       train_once)


TRAIN_HELP = {   # one line per TrainConfig field (train/fit.py)
    "epochs": "most epochs (0: 100 epochs of at least 100 optimizer steps each: more passes on a small set)", "lr": "peak learning rate (Adam)", "batch": "contiguous pieces trained side by side",
    "chunk": "length of one piece; the state is carried across its windows", "window": "truncated-BPTT length",
    "clip": "gradient clipping max norm", "warmup_steps": "linear learning-rate warm-up steps",
    "plateau_patience": "epochs without improvement before the learning rate halves (an epoch: at least 100 optimizer steps)",
    "patience": "early stopping: epochs without improvement, best weights kept (an epoch: at least 100 optimizer steps)",
    "min_epoch_steps": "an epoch of the schedule (cap, patiences) is at least this many optimizer steps: a pass over a small set counts as a fraction of one (1: every pass is an epoch)",
    "accum": "windows per optimizer step", "max_bad_steps": "non-finite losses in a row before giving up",
    "weight_decay": "Adam weight decay", "seed": "random seed", "threads": "torch threads (more only pay for hidden sizes in the hundreds; measured: bench/train_threads.py)",
    "max_minutes": "time budget in minutes (0: none); training ends with the best weights so far",
    "loss": "per-step loss: mae (the metric; rewards forecasting exactly no change) or mse",
    "balance_horizons": "weight each horizon step by 1 / its mean |change| on the training split (else the far steps dominate)",
}


def _units(text):
    pairs = tuple(tuple(s.strip() for s in item.split("=", 1)) for item in _csv(text))
    bad = [p[0] for p in pairs if len(p) != 2 or not p[0]]
    if bad:
        raise argparse.ArgumentTypeError(f"--units wants column=unit pairs separated by commas; got {bad[0]!r}")
    return pairs


def _csv(text):
    return tuple(s.strip() for s in text.split(",") if s.strip()) if text else ()


def _seeds(text):
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected distinct whole numbers >= 0, e.g. 0,1,2")
    return seeds


def _count(flag: str, what: str):
    """An argparse type: a whole number 1..1024, the message naming the flag."""
    def parse(text):
        if not text.isdigit() or not 1 <= int(text) <= 1024:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected a number of {what}, 1 to 1024")
        return int(text)
    return parse


# Each number flag's range [lo, hi] (lo excluded where the third value is True): out of it, argparse's usage line.
RANGES = {"epochs": (0, 1e6), "min_epoch_steps": (1, 1e9), "lr": (0, 1e30, True), "batch": (1, 4096),
          "chunk": (2, 1e9), "window": (1, 1e6), "clip": (0, 1e30, True), "warmup_steps": (0, 1e9),
          "plateau_patience": (1, 1e6), "patience": (1, 1e6), "accum": (1, 1e6), "max_bad_steps": (1, 1e6),
          "weight_decay": (0, 10), "seed": (0, 2 ** 32 - 1), "threads": (1, 1024), "max_minutes": (0, 1e7),
          "horizon": (1, 10_000), "max_gap": (0, 1e9), "hidden": (1, 65_536), "layers": (1, 64),
          "eval_window": (1, 1e7), "utc_offset_hours": (-24, 24), "dropout": (0, 1)}


def _number(name: str, kind: type):
    """runtime/args.number for the flag of `name`, within RANGES[name]."""
    lo, hi, *open_lo = RANGES[name]
    return number("--" + name.replace("_", "-"), kind, lo, hi, bool(open_lo))


def _period(text):
    try:
        return parse_period(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _timezone(text):
    try:
        zone(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _delimiter(text):
    try:
        return delimiter_arg(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _decimal(text):
    if len(text) != 1 or text.isdigit() or text in "\r\n":
        raise argparse.ArgumentTypeError(f"--decimal {text!r}: expected one character, '.' or ','")
    return text


def _skip_rows(text):
    if not text.isdigit() or int(text) > 10_000:
        raise argparse.ArgumentTypeError(f"--skip-rows {text!r}: expected a number of lines, 0 to 10000")
    return int(text)


def _train_config_args(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its default shown."""
    for f in TrainConfig.__dataclass_fields__:
        default, flag = getattr(TrainConfig, f), "--" + f.replace("_", "-")
        if f == "loss":
            p.add_argument(flag, choices=LOSSES, default=default, help=TRAIN_HELP[f])
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=TRAIN_HELP[f])
        else:
            p.add_argument(flag, type=_number(f, type(default)), default=default, help=TRAIN_HELP[f])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("python -m train"), description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _data_args(p)
    _reading_args(p)
    _model_args(p)
    _train_config_args(p)
    _run_args(p)
    return p


def _data_args(p: argparse.ArgumentParser) -> None:
    """What to read and forecast: the data, its columns, its series."""
    p.add_argument("--data", required=True,
                   help=f"CSV/Parquet file, or a bundled dataset: {', '.join(DATASETS)}")
    p.add_argument("--target", help="column to forecast (bundled datasets have a default)")
    p.add_argument("--features", type=_csv, default=(), help="input columns, comma-separated; none given: all numeric")
    p.add_argument("--exclude", type=_csv, default=(), help="columns to leave out")
    p.add_argument("--units", type=_units, default=(),
                   help="units for the tables, e.g. 'T1=degC,RH_1=%%' (headers like 'T1[degC]' are read too)")
    p.add_argument("--time-col", help="timestamp column; none given: found by name or by parsing")
    p.add_argument("--horizon", type=_number("horizon", int), default=6, help="steps ahead to forecast")
    p.add_argument("--max-gap", type=_number("max_gap", int), default=3, help="longest gap (steps) to interpolate; longer ones split")
    p.add_argument("--resample", type=_period, default=None, metavar="PERIOD",
                   help="readings at irregular times (written on change, events, a Home Assistant history) on a "
                        "grid of this period, e.g. 10min, 1h, 30s: each period the mean of its readings, as serve "
                        "averages them; a period without one holds the last value (train/resample.py)")
    p.add_argument("--series-col", default=DataSpec.series_col,
                   help="the column naming each row's series (long format: time, node, value, ...): one model "
                        "for many series, each with its own grid, gaps, 70/15/15 split and scale; with a folder "
                        "--data DIR/ the file stem (CSVs; site2/a for site2/a.csv) or the node partition (Parquet) is the series")
    p.add_argument("--series-input", default=DataSpec.series_input, choices=IDENTITY,
                   help="many series: each series' identity as model inputs, one per series (1 for its own, 0 for "
                        "the others; a node the bundle does not know gets the average): on, or off (measured no "
                        "better on the bundled rooms: train/calendar.py)")


def _reading_args(p: argparse.ArgumentParser) -> None:
    """How to read the table and its times: the calendar, the clock, odd CSVs."""
    p.add_argument("--calendar", default=DataSpec.calendar,
                   help="calendar inputs from the timestamps: auto (time of day when a day spans >= 4 samples and the "
                        "data >= 2 days; day of week when a sample is <= 1 day and the data >= 3 weeks), none, day, week, day,week")
    clock = p.add_mutually_exclusive_group()
    clock.add_argument("--timezone", type=_timezone, default=DataSpec.timezone,
                       help="IANA time zone of the timestamps, e.g. Europe/Paris: naive times are read in it "
                            "(DST included), aware ones converted to it, and the calendar inputs follow its local "
                            "clock; the bundle carries it (format 5), so the device reads times the same way")
    clock.add_argument("--utc-offset-hours", type=_number("utc_offset_hours", float), default=DataSpec.utc_offset_hours,
                       help="hours the timestamps' clock is ahead of UTC (naive local times), so epoch-second times "
                            "on the device give the same calendar inputs")
    p.add_argument("--delimiter", type=_delimiter, default=DataSpec.delimiter,
                   help="CSV field separator, one character (e.g. ';' or tab); none given: ',', or the one that splits "
                        "the header and the lines below it alike (';', tab, '|')")
    p.add_argument("--decimal", type=_decimal, default=DataSpec.decimal,
                   help="decimal mark of the CSV's numbers, e.g. ',' for 21,5; none given: ',' in a file not "
                        "delimited by commas whose numbers show commas and no points, else '.'")
    p.add_argument("--skip-rows", type=_skip_rows, default=DataSpec.skip_rows,
                   help="lines to skip above the CSV's header (a title or logger metadata)")


def _model_args(p: argparse.ArgumentParser) -> None:
    """The model's shape and what it forecasts from."""
    p.add_argument("--hidden", type=_number("hidden", int), default=ModelSpec.hidden_size, help="hidden units per layer")
    p.add_argument("--layers", type=_number("layers", int), default=ModelSpec.num_layers, help="stacked recurrent layers")
    p.add_argument("--dropout", type=_number("dropout", float), default=ModelSpec.dropout, help="dropout between layers")
    p.add_argument("--members", type=int, default=ModelSpec.members,
                   help="independent nets of hidden/members units each, trained side by side and averaged (an "
                        f"ensemble exported as one net with block-diagonal weights: the same device cost); 0: one "
                        f"per {UNITS_PER_MEMBER} hidden units")
    p.add_argument("--no-deadband", action="store_true",
                   help="forecast every change the model gives (else changes below a per-step threshold fitted on "
                        "validation are forecast as no change)")
    p.add_argument("--base", choices=BASES, default=ModelSpec.base,
                   help="what the model forecasts the change from (train/base.py): level, the target's current "
                        "reading; ar, a linear AR on its last 2-24 readings when that forecasts the validation split "
                        "5%% better than the level; auto, ar below 5,000 training rows per series, else level")
    p.add_argument("--series-base", choices=SERIES_BASES, default=ModelSpec.series_base,
                   help="many series on an AR base: pooled, one base for all; own, also each series' own (the level "
                        "or AR(p) fitted on it) where that forecasts its validation split 5%% better. Measured "
                        "(bench/many_series_own_base.md): own helped series of different kinds (traffic beside "
                        "rooms: 2.0x its own model -> 1.6x) and cost series of one kind (nine rooms)")
    p.add_argument("--cell", choices=("gru", "lstm"), default="gru", help="recurrent cell")
    p.add_argument("--no-residual", action="store_true", help="forecast the level, not the change")
    p.add_argument("--eval-window", type=_number("eval_window", int), default=ModelSpec.eval_window,
                   help="context of the windowed evaluation (the streamed one has all of it)")


def _run_args(p: argparse.ArgumentParser) -> None:
    """Where the checkpoint goes, and the runs beyond one training: search, seeds, Ray, comparisons."""
    p.add_argument("--out", default="checkpoints/model.pt", help="checkpoint path (folders are created)")
    p.add_argument("--search", nargs="?", const="", default=None, metavar="GRID",
                   help="grid search scored on validation, e.g. 'hidden_size=16,32;num_layers=1,2;lr=0.002;dropout=0,0.1;members=1,4' "
                        "(the keys left out keep this run's settings; --search alone: hidden_size 16,32,64 x num_layers 1,2 x dropout 0,0.1)")
    p.add_argument("--seeds", type=_seeds, metavar="LIST",
                   help="the same run for each seed, e.g. 0,1,2: checkpoints OUT_s<seed>.pt and the table OUT.seeds.md")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run --search's grid points and --seeds' runs as tasks on the Ray cluster at HOST:PORT (or "
                        "auto); RAY_ADDRESS is read when this is not given. Every node needs this project and the data "
                        "at the same path")
    p.add_argument("--workers", type=_count("--workers", "workers"), default=0, metavar="N",
                   help="data-parallel training of one model on N Ray Train workers (one CPU each; needs --ray or "
                        "RAY_ADDRESS), each walking its share of every batch, the gradients summed each step")
    p.add_argument("--compare", metavar="REPORT", help="GRU vs LSTM at the same budget; write this markdown file")
    p.add_argument("--compare-local", type=_count("--compare-local", "series"), default=0, metavar="N",
                   help="many series: after the global model, train one model per series on that series alone (the "
                        "N series with the most training rows; Ray tasks with --ray) and compare them on the same "
                        "test splits: the table OUT.local.md")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def show(path: str) -> int:
    """Print the metrics table saved in a checkpoint."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .evaluate import metrics_table, step_table
    try:
        _, ck = load_checkpoint(path)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = ck["metrics"]
    unit = ck["units"].get(ck["target"], "")
    print(f"{path}: {ck['config']['cell'].upper()} hidden {ck['config']['hidden_size']} x "
          f"{ck['config']['num_layers']} layer(s), {m['parameters']} parameters, data {ck['data_source']}")
    print(f"test split, {m['origins']} forecast origins, {ck['target']} [{unit}], horizon {ck['config']['horizon']}")
    print(metrics_table({"models": m["test"]}))
    print(step_table({"models": m["test"]}))
    print(f"streamed / windowed MAE = {m['streamed_over_windowed_mae']:.3f}")
    return 0


def _where(address, rows) -> str:
    """The table's note on a cluster run: where it ran, and which tasks ran twice."""
    if not address:
        return ""
    again = [r for r in rows if r["attempts"] > 1]
    return (f"Ran as Ray tasks on {address}, {len({r['node'] for r in rows})} node(s); "
            + (f"{len(again)} task(s) retried once after their worker died (attempts 2)." if again
               else "no task was retried."))


def _seeds_run(a, data, spec, ms, tc, address) -> int:
    """--seeds: each seed's checkpoint as OUT_s<seed>.pt, and the table of all as OUT.seeds.md."""
    from .search import seed_rows, seeds, write_table
    outcomes = seeds(data, spec, ms, tc, a.seeds, address, progress=not a.quiet)
    stem = os.path.splitext(a.out)[0]
    for o in outcomes:
        save_run(o.run, f"{stem}_s{o.job.train.seed}.pt", spec, o.job.train, ms)
    rows = seed_rows(outcomes, address)
    write_table(rows, stem + ".seeds.md", f"The same run for seeds {', '.join(map(str, a.seeds))}",
                _where(address, rows))
    print(open(stem + ".seeds.md").read())
    return 0


def _compare_local_run(a, run, spec, ms, tc, address) -> None:
    """--compare-local N: the global model against per-series models, the table as OUT.local.md."""
    from .search import LOCAL_MARGIN, LOCAL_ROWS, compare_local, write_table
    rows = compare_local(run, spec, ms, tc, a.compare_local, address, progress=not a.quiet)
    table = os.path.splitext(a.out)[0] + ".local.md"
    write_table(rows, table, "The global model against one model per series, trained alone",
                f"MAE streamed over each series' own test split, the same settings for both. Goal: on a series with "
                f"more than {LOCAL_ROWS:,} training rows, no step more than {LOCAL_MARGIN:.0%} worse than the "
                f"per-series model (worst_step_ratio <= {1 + LOCAL_MARGIN:g}). {_where(address, rows)}")
    print(open(table).read())


def _check_flags(a) -> str | None:
    """Flags that cannot go together end the run with argparse's usage line; returns the Ray address."""
    if a.delimiter is not None and a.delimiter == a.decimal:
        parser().error(f"--decimal {a.decimal!r} is also the field --delimiter; expected two different characters, "
                       "e.g. --delimiter ';' --decimal ,")
    modes = [f for f, on in (("--search", a.search is not None), ("--seeds", a.seeds), ("--workers", a.workers),
                             ("--compare", a.compare)) if on]
    if len(modes) > 1:
        parser().error(f"{' and '.join(modes)}: expected one of them per run")
    if a.compare_local and (a.seeds or a.compare):
        parser().error("--compare-local compares the one global model this run trains: not with --seeds or --compare")
    if a.chunk < a.window:
        parser().error(f"--chunk {a.chunk} is shorter than --window {a.window}: no piece would hold a window")
    address = ray_address(a.ray)
    if a.workers and not address:
        parser().error("--workers needs a Ray cluster: give --ray HOST:PORT (or auto), or set RAY_ADDRESS")
    return address


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["show"]:
        if len(argv) == 2 and argv[1] not in ("-h", "--help"):
            return show(argv[1])
        print("usage: python -m train show CHECKPOINT\n\nA checkpoint's data report, model and test metrics "
              "(what train printed).", file=sys.stdout if argv[1:] in (["-h"], ["--help"]) else sys.stderr)
        return 0 if argv[1:] in (["-h"], ["--help"]) else 2
    a = parser().parse_args(argv)
    address = _check_flags(a)
    spec = DataSpec(a.data, a.target, a.features, a.exclude, a.time_col, a.max_gap, a.horizon, a.units,
                    a.calendar, a.utc_offset_hours, a.timezone, a.delimiter, a.decimal, a.skip_rows,
                    a.series_col, series_input=a.series_input, resample_s=a.resample)
    ms = ModelSpec(a.hidden, a.layers, a.dropout, a.cell, not a.no_residual, a.eval_window, a.members, not a.no_deadband,
                   a.base, a.series_base)
    tc = TrainConfig(**{f: getattr(a, f) for f in TrainConfig.__dataclass_fields__})
    try:
        data = load_prepared(spec)
        _describe(a, data)
        why = None if len(data.series.parts) > 1 else unscorable(data, a.eval_window)
        if why:
            raise DataError(why)
        if a.compare_local and len(data.series.parts) < 2:
            raise ValueError("--compare-local needs many series (--series-col, or a folder of series); this data is one")
        run = _run(a, data, spec, ms, tc, address)
        if not isinstance(run, RunResult):
            return run
    except (DataError, TrainingError, ValueError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"\ntest split, {run.evaluation['origins']} forecast origins, {data.series.target_name} "
          f"[{data.series.units.get(data.series.target_name, '')}], horizon {a.horizon} "
          f"(MASE: vs in-sample persistence per step)")
    print(report_text(run))
    print(f"checkpoint: {a.out}  ({run.fit.best_epoch} best of {len(run.fit.history)} epochs, "
          f"{run.fit.seconds:.1f}s, {run.fit.skipped_steps} skipped steps; stopped by {run.fit.stopped})")
    return 0


def _describe(a, data) -> None:
    """The data report and the model's inputs, before training."""
    s = data.series
    cycles, ids = [d["name"] for d in (s.derived or {}).get("inputs", []) if d["kind"] == "cycle"], series_ids(s.derived)
    print(f"data: {s.source or a.data}: " + "; ".join(s.report.lines()))
    print(f"time: {time_span(s)}")
    print(f"features ({len(s.features)}): {', '.join(s.features)} -> target {s.target_name}, horizon {a.horizon}"
          + (f"; derived from the time: {', '.join(cycles)}" if cycles else "")
          + (f"; each series' identity ({len(ids)} inputs)" if ids else ""))


def time_span(s) -> str:
    """The grid's sample period and first and last reading on the data's clock: what a misread time
    column (day and month swapped, spreadsheet serial days, seconds since a logger started) shows."""
    if s.start_s is None or s.period_s is None:
        return "no time column: rows in file order, no calendar inputs"
    walls = s.wall_times()
    first, last = (datetime(1970, 1, 1) + timedelta(seconds=float(v)) for v in (walls.min(), walls.max()))
    clock = s.timezone or (f"UTC{s.utc_offset_s / 3600:+g}h" if s.utc_offset_s else "UTC, or naive as written")
    return (f"a reading every {step_label(1, s.period_s)[1:]} (estimated from the intervals), {first:%Y-%m-%d %H:%M:%S} "
            f"to {last:%Y-%m-%d %H:%M:%S} ({clock})"
            + ("; times in the 1970s: seconds since a logger started? then the calendar inputs mean nothing: "
               "pass --calendar none" if first.year < 1980 and (s.derived or {}).get("inputs") else ""))


def _run(a, data, spec, ms, tc, address):
    """The run the flags ask for: a RunResult (saved, compared with local models if asked), or an
    exit code for the runs that write their own tables (--compare, --seeds)."""
    if a.compare:
        from .search import compare, write_table
        rows = compare(data, ms, tc, progress=not a.quiet)
        write_table(rows, a.compare, "GRU vs LSTM, same size and training budget",
                    f"data: {data.series.source}; hidden {ms.hidden_size}, layers {ms.num_layers}, "
                    f"max epochs {tc.epochs or 'auto'}, early stopping patience {tc.patience}; "
                    "test metrics streamed over the test split.")
        print(open(a.compare).read())
        return 0
    if a.seeds:
        return _seeds_run(a, data, spec, ms, tc, address)
    if a.search is not None:
        from .search import parse_grid, search, write_table
        rows, (_, run, ms, tc) = search(data, spec, ms, tc, parse_grid(a.search), address, progress=not a.quiet)
        table = os.path.splitext(a.out)[0] + ".search.md"
        write_table(rows, table, "Hyperparameter search (scored on the validation split, streamed)",
                    _where(address, rows))
        print(open(table).read())
    elif a.workers:
        from .cluster import train_data_parallel
        run = train_data_parallel(data, spec, ms, tc, address, a.workers, os.path.splitext(a.out)[0] + ".ray",
                                  progress=not a.quiet)
    else:
        run = train_once(data, ms, tc, progress=not a.quiet)
    save_run(run, a.out, spec, tc, ms)
    if a.compare_local:
        _compare_local_run(a, run, spec, ms, tc, address)
    return run


if __name__ == "__main__":
    sys.exit(main())
