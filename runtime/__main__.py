"""`python -m runtime {stream,serve,verify,info,bench} BUNDLE`, `score CAPTURE`: the on-device commands."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .args import prog
from .bundle import PRECISIONS, BundleError
from .derived import derived_of
from .forecaster import ENGINES, NAN_POLICIES
from .service.clock import AGGREGATES
from .service.config import SERVE_NAN_POLICIES
from .stream import stream_cmd


def info(a) -> int:
    from .bundle import read_manifest
    m = read_manifest(a.bundle)
    md = m["model"]
    print(f"bundle {a.bundle} (id {m['bundle_id']}, format {m['format_version']}, created {m.get('created', '?')})")
    print(f"model: {md['cell'].upper()} {md['num_layers']} x {md['hidden_size']}, {md['input_size']} inputs, "
          f"forecast {m['targets'][0]['name']} {md['horizon']} steps ahead every {m['sample_period_s']} s")
    print("features: " + ", ".join(f"{f['name']}[{f['unit']}]" if f["unit"] else f["name"] for f in m["features"]))
    print(_base_line(m))
    d = derived_of(m)
    if d is not None and d.cycles:
        print("derived from each reading's time: " + ", ".join(c["name"] for c in d.cycles))
    if d is not None and d.ids:
        print(f"the series' identity as inputs: {len(d.ids)} series")
    for art in m["artifacts"]:
        print(f"  {art['file']:<24} {art['engine']:<12} {art['precision']:<5} batch {str(art['batch'] or 'any'):<4} "
              f"{art['bytes']:>8} bytes")
    streamed = {k: v for k, v in m.get("metrics", {}).get("test", {}).items() if "streamed" in k or k == "persistence"}
    for k, v in streamed.items():
        print(f"  test {k}: MAE {v['mae']:.4g}, MASE {v['mase']:.3f}")
    iv = m.get("intervals")
    if iv:
        for lv, w in iv["width"].items():
            print(f"  {float(lv):.0%} interval width per step: " + ", ".join(f"{v:.4g}" for v in w)
                  + f"  (test coverage offline: {', '.join(f'{c:.0%}' for c in iv['test_coverage_offline'][lv])})")
    for name, d in m.get("drift", {}).get("artifacts", {}).items():
        print(f"  drift {name}: RMSE/std(y) {100 * d['continuous']['vs_float']['rmse_over_std']:.2f}%")
    return 0


def _base_line(m: dict) -> str:
    """What the forecasts' change is from, and what each series of a many-series bundle has of its own."""
    base, series = m["model"].get("base"), m.get("series") or {}
    line = "residual base: " + (f"AR({len(base) - 1})" if base else "the current reading")
    if series:
        own = {k: sum(bool(s.get(k)) for s in series.values()) for k in ("base", "deadband")}
        line += (f"; {len(series)} series, each with its own scale, {own['base']} with their own base, "
                 f"{own['deadband']} with their own deadband (a node of none of them: the pooled ones)")
    return line


def verify_cmd(a) -> int:
    from .verify import verify
    rows = verify(a.bundle)
    for r in rows:
        detail = f"max abs err {r['max_abs_err']:.2e} (tier {r['tier']})" if "max_abs_err" in r else r.get("why", "")
        print(f"{r['status']:<8} {r['file']:<24} {r['engine']:<12} {r['precision']:<5} {detail}")
    ran = [r for r in rows if r["status"] != "skipped"]
    if not ran:
        print(f"error: nothing was verified: all {len(rows)} artifact(s) were skipped (see above); install an engine "
              "the bundle has an artifact for", file=sys.stderr)
        return 1
    return 0 if all(r["status"] == "ok" for r in ran) else 1


def bench_cmd(a) -> int:
    from .bench import bench, check_budgets
    from .bundle import read_manifest
    res = bench(a.bundle, a.steps, a.streams, a.soak)
    print(f"{'engine/precision':<22}{'artifact':<22}{'step p50':>10}{'step p99':>10}{'raw p50':>9}{'ratio':>7}  (us, B=1)")
    for k, v in res["latency_b1"].items():
        print(f"{k:<22}{v['artifact']:<22}{v['step_p50_us']:>10.1f}{v['step_p99_us']:>10.1f}"
              f"{v['raw_p50_us']:>9.1f}{v['wrapper_ratio']:>7.2f}")
    for k, v in res[f"throughput_b{a.streams}"].items():
        print(f"{k:<22}{v['artifact']:<22}{v['stream_steps_per_s']:>12,.0f} stream-steps/s at B={a.streams}"
              + (f"; every stream's series set in {v['set_series_s']:.3f} s" if "set_series_s" in v else ""))
    rp = res["runtime_process"]
    print(f"runtime-only process ({rp['engine']}): import {1e3 * rp['import_s']:.0f} ms, load {1e3 * rp['load_s']:.0f} ms, "
          f"peak RSS {rp['peak_rss_mb']:.0f} MB, heavy modules: {rp['heavy_modules'] or 'none'}")
    if "soak" in res:
        s = res["soak"]
        print(f"soak: {s['steps']:,} steps on {s['engine']} in {s['seconds']:.1f} s, RSS growth {s['rss_growth_mb']:.1f} MB, "
              f"state finite: {s['state_finite']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    if a.check:
        over = check_budgets(read_manifest(a.bundle), res["latency_b1"])
        for line in over:
            print(f"OVER BUDGET: {line}", file=sys.stderr)
        return 1 if over else 0
    return 0


def score_cmd(a) -> int:
    from .score import print_score, score
    print_score(score(a.path), a.json)
    return 0


def serve_cmd(a) -> int:
    from .service.config import default_state_dir, merge, read_toml
    from .service.service import serve
    flags = serve_flags(a)
    file_cfg = read_toml(a.config) if a.config else {}
    if not a.state_dir and not (file_cfg.get("state") or {}).get("dir") and default_state_dir(a.bundle):
        flags["state"]["dir"] = default_state_dir(a.bundle)      # a device root's release: <root>/state
    return serve(a.bundle, merge(file_cfg, flags))


def serve_flags(a) -> dict:
    """`serve`'s flags as config sections (runtime/service/config.py's keys): only those given, which
    override the --config file's."""
    flags = {"model": {k: v for k, v in (("engine", a.engine), ("precision", a.precision), ("streams", a.streams),
                                         ("nan_policy", a.nan_policy), ("period_s", a.period_s),
                                         ("nodes_regex", a.nodes_regex), ("slot_idle_s", a.slot_idle_s)) if v is not None},
             "mqtt": {k: v for k, v in (("broker", a.broker), ("client_id", a.client_id), ("tls_ca", a.tls_ca),
                                        ("tls_cert", a.tls_cert), ("tls_key", a.tls_key)) if v is not None},
             "clock": {k: v for k, v in (("aggregate", a.aggregate), ("grace_s", a.grace_s)) if v is not None},
             "state": {k: v for k, v in (("dir", a.state_dir), ("checkpoint_every", a.checkpoint_every)) if v is not None}}
    if a.intervals:
        flags["model"]["intervals"] = True
    if a.nodes is not None:
        flags["model"]["nodes"] = [n.strip() for n in a.nodes.split(",") if n.strip()]
    if a.tls:
        flags["mqtt"]["tls"] = True
    if a.subscribe:
        flags["mqtt"]["subscribe"] = [{"topic": t, "ignore_extra_fields": a.ignore_extra_fields} for t in a.subscribe]
    if a.publish:
        flags["mqtt"]["publish"] = [{"topic": t, "retain": a.retain} for t in a.publish]
    if a.homeassistant:
        flags["mqtt"]["homeassistant"] = True
    if a.stats_every is not None:
        flags["mqtt"]["stats_every_s"] = a.stats_every
    if a.serial:
        flags["serial"] = {"url": a.serial, **({"format": a.serial_format} if a.serial_format else {})}
    if a.stdin:
        flags["stdin"] = {"enabled": True}
    if a.csv:
        flags["csv"] = {"path": a.csv}
    if a.stdout:
        flags["stdout"] = {"enabled": True}
    flags["capture"] = {k: v for k, v in (("capture_days", a.capture_days), ("capture_mb", a.capture_mb))
                        if v is not None}
    if a.capture:
        flags["capture"]["enabled"] = True
    flags["shadow"] = {k: v for k, v in (("bundle", a.shadow), ("auto_rollback", a.auto_rollback or None))
                       if v is not None}
    return flags


def _add_serve(sub) -> None:
    v = sub.add_parser("serve", help="the service: MQTT / serial / stdin readings in, forecasts out (MQTT, CSV, stdout)",
                       description="Flags override the --config file; see runtime/service/config.py for every key.")
    v.add_argument("bundle")
    v.add_argument("--config", help="device.toml")
    v.add_argument("--broker", help="host:port of the MQTT broker")
    v.add_argument("--client-id", help="fixed MQTT client id (default gru-edge-<hostname>): the persistent session")
    v.add_argument("--tls", action="store_true", help="TLS to the broker, verified against the system's CAs")
    v.add_argument("--tls-ca", help="TLS to the broker, verified against this CA file (host name checked too)")
    v.add_argument("--tls-cert", help="client certificate (PEM) for TLS")
    v.add_argument("--tls-key", help="the client certificate's unencrypted key (mode 600); the password: "
                                     "[mqtt] username and password_file in --config")
    v.add_argument("--subscribe", action="append", help="topic of readings, '+' is the node id (repeatable)")
    v.add_argument("--ignore-extra-fields", action="store_true",
                   help="payload keys that are no feature are ignored (Zigbee2MQTT, Tasmota), not refused")
    v.add_argument("--publish", action="append", help="forecast topic with {node}, e.g. 'forecasts/{node}' (repeatable)")
    v.add_argument("--retain", action="store_true", help="publish forecasts retained")
    v.add_argument("--homeassistant", action="store_true", help="publish Home Assistant MQTT discovery messages")
    v.add_argument("--serial", help="serial port or pyserial URL to read CSV/JSON lines from")
    v.add_argument("--serial-format", choices=("csv", "json"))
    v.add_argument("--stdin", action="store_true", help="read CSV readings from stdin (ends at EOF)")
    v.add_argument("--csv", help="append forecasts to this CSV (rotated by size)")
    v.add_argument("--stdout", action="store_true", help="print forecasts as JSON lines")
    v.add_argument("--streams", type=int, help="slots: the most nodes served (default 64)")
    v.add_argument("--nodes", help="allowlist: comma-separated node ids that may take a slot (default: any)")
    v.add_argument("--nodes-regex", help="allowlist: node ids that fully match this regular expression")
    v.add_argument("--slot-idle-s", type=float, help="free a node's slot after this many idle seconds (default never)")
    v.add_argument("--state-dir", help="checkpoint every stream's state here; restored at start")
    v.add_argument("--checkpoint-every", type=int, help="ticks between checkpoints (default 60)")
    v.add_argument("--intervals", action="store_true", help="add lower_<level>/upper_<level> to every step")
    v.add_argument("--capture", action="store_true", help="keep every period's readings and forecasts in "
                                                          "<state dir>/capture.db (SQLite) for `flash collect`")
    v.add_argument("--capture-days", type=float, help="capture: delete rows older than this (default 90)")
    v.add_argument("--capture-mb", type=float, help="capture: keep capture.db under this size (default 100)")
    v.add_argument("--shadow", metavar="BUNDLE", help="run this candidate beside the live model: scored on the "
                                                     "same truths, never published (<state dir>/shadow_score.json)")
    v.add_argument("--auto-rollback", action="store_true", help="after a promotion, go back to <root>/previous when "
                                                                 "the live score collapses (see flash promote)")
    v.add_argument("--engine", choices=ENGINES)
    v.add_argument("--precision", choices=PRECISIONS)
    v.add_argument("--nan-policy", choices=SERVE_NAN_POLICIES)
    v.add_argument("--aggregate", choices=AGGREGATES, help="a feature's value in a period (default mean)")
    v.add_argument("--grace-s", type=float, help="wall seconds a period waits for late readings")
    v.add_argument("--period-s", type=float, help="override the bundle's sample period (replays, tests)")
    v.add_argument("--stats-every", type=float, help="seconds between stats messages (default 60)")


def _delimiter(text: str) -> str:
    text = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"a delimiter is one character (or 'tab'), got {text!r}")
    return text


def _add_stream(sub) -> None:
    """The `stream` subcommand's arguments."""
    s = sub.add_parser("stream", help="CSV readings in, CSV forecasts out, one line per reading stepped")
    s.add_argument("bundle")
    s.add_argument("--engine", choices=ENGINES, default="auto")
    s.add_argument("--precision", choices=PRECISIONS, default="fp32")
    s.add_argument("--input", default="-")
    s.add_argument("--output", default="-")
    s.add_argument("--state", help="state file: restored at start, saved at exit")
    s.add_argument("--checkpoint-every", type=int, default=0, help="also save the state every N readings")
    s.add_argument("--nan-policy", choices=NAN_POLICIES, default="hold")
    s.add_argument("--delimiter", type=_delimiter, help="CSV field delimiter (default: the one training read its "
                                                         "file with, else ',')")
    s.add_argument("--decimal", choices=(".", ","), help="decimal mark (default: training's, else '.')")
    s.add_argument("--time-col", help="the column with each reading's time (ISO 8601 or epoch seconds): a bundle with "
                                      "calendar inputs needs one (default: a column named time, timestamp, date, ...), "
                                      "and with it readings keep time as under serve (late ones and a second one in a "
                                      "sample period skipped, missing periods stepped); without calendar inputs, only "
                                      "when named here")
    s.add_argument("--capture", metavar="PATH", help="also record every reading and its forecast in this "
                                                     "capture database (SQLite; see runtime score)")
    s.add_argument("--intervals", action="store_true",
                   help="also write <target>+<k>_lo80 / _hi80 ... columns (the bundle's interval levels)")
    s.add_argument("--series", metavar="ID", help="a bundle of many series: forecast these readings as series ID's "
                                                  "(its own scales); without it, the pooled scale")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=prog("python -m runtime"), description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_stream(sub)
    _add_serve(sub)
    for name in ("verify", "info"):
        sub.add_parser(name).add_argument("bundle")
    c = sub.add_parser("score", help="each node's live MAE per horizon step against persistence, from a "
                                     "capture.db or a dataset `flash collect` wrote")
    c.add_argument("path", help="capture.db, or the collected dataset's folder")
    c.add_argument("--json", action="store_true", help="print the figures as JSON")
    b = sub.add_parser("bench", help="latency p50/p99 per artifact, B=64 throughput, memory; JSON out")
    b.add_argument("bundle")
    b.add_argument("--steps", type=int, default=10_000, help="timed B=1 steps per artifact")
    b.add_argument("--streams", type=int, default=64)
    b.add_argument("--soak", type=int, default=0, help="also run this many consecutive steps (memory, state)")
    b.add_argument("--json", help="write every figure to this file")
    b.add_argument("--check", action="store_true", help="exit 1 when a p99 exceeds the manifest's budget")
    a = p.parse_args(argv)
    # A reading numpy overflows on (a float32-sized value over a small spread) becomes inf, which the
    # forecaster's input policy imputes and counts: numpy's own warning would only be noise on stderr.
    np.seterr(over="ignore")
    try:
        return {"stream": stream_cmd, "verify": verify_cmd, "info": info, "bench": bench_cmd, "serve": serve_cmd,
                "score": score_cmd}[a.cmd](a)
    except (BundleError, ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
