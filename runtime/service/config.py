"""`serve` configuration: a TOML file (`--config device.toml`), flags on top. Every key checked.

    [model]   engine, precision, nan_policy ("hold"|"mean"), intervals, streams, period_s,
              nodes, nodes_regex, slot_idle_s, device_name
    [clock]   aggregate ("mean"|"last"), grace_s, max_gap_ticks, max_future_s, active_ticks
    [mqtt]    broker ("host:port"), client_id, username, password_file, keepalive, qos, base_topic,
              stats_every_s, homeassistant, discovery_prefix, tls, tls_ca, tls_cert, tls_key
    [[mqtt.subscribe]]  topic ("sensors/+/state", "sensors/{node}/{feature}"), fields
                        ({feature = "payload key"}), ignore_extra_fields, qos
    [[mqtt.publish]]    topic ("forecasts/{node}"), qos, retain
    [serial]  url (a device or any pyserial URL), baudrate, format ("csv"|"json"), node
    [stdin]   enabled, node
    [csv]     path, rotate_bytes, keep
    [stdout]  enabled
    [state]   dir, checkpoint_every
    [capture] enabled, path (default <state dir>/capture.db), capture_days, capture_mb
    [shadow]  bundle (a candidate run beside the live model, scored, never published), auto_rollback,
              retrain_window (periods scored before auto_rollback judges a promoted model; default 1000)

The slot allowlist (`[model]`): a node is served when its id is one of `nodes` (exact strings) or
when its WHOLE id matches `nodes_regex` (`re.fullmatch`: "kitchen|garage-[0-9]+" admits garage-7,
not garage-7x). With neither key (the default, `nodes = []`), any node takes a free slot, first
come, first served. `slot_idle_s` (seconds > 0): a slot unused that long is freed, and not
restored from the state once expired; left out, slots never expire.

Many series (`[model] device_name`): a bundle of many series forecasts a node in its own series'
scale. A model trained on several devices' collected data (`flash collect`) names its series
device/node; `device_name` is this device's name there (collect's `--name`, by default its host),
and node N is then series "device_name/N" where the bundle has it. Otherwise node N is series N,
else the one series whose name ends in "/N"; a node that ends several (or none) is forecast with
the pooled scale, and said once.

Credentials and TLS (`[mqtt]`): `password_file` names a file holding the broker password (its
trailing newline dropped); it is refused unless only its owner can read it (`chmod 600`), and so
is `tls_key`. There is no password flag. The old `password` key still works, but the password then
sits in device.toml; neither is ever echoed in an error or a log line. TLS is on when `tls = true`
(the system's CAs) or any of `tls_ca` (the CA file that signed the broker's certificate),
`tls_cert` and `tls_key` (a client certificate and its unencrypted key) is set. The broker's
certificate and host name are always verified: there is no key to turn that off, and `tls = false`
beside a tls_* file is an error.

Capture (`[capture]`, `--capture`; runtime/capture.py): every closed period's readings and
forecasts go into `path` (default capture.db in the state dir, so capture needs one), keeping
`capture_days` days (default 90) and at most `capture_mb` MB (default 100), the oldest rows first.
When serve runs a device root's release (`<root>/current`) without a state dir, the state dir is
`<root>/state`: where `flash collect` looks for capture.db.

Shadow (`[shadow] bundle`, `--shadow BUNDLE`; runtime/service/shadow.py): a candidate scored
beside the live model on the same ticks, never published. When serve runs `<root>/current` and
`<root>/shadow` exists (`flash deploy --shadow`), that is the shadow unless one is given.
"""
from __future__ import annotations

import copy
import math
import os
import re
import socket
import ssl
import string
import stat

try:
    import tomllib
except ModuleNotFoundError:          # Python < 3.11
    import tomli as tomllib          # type: ignore[no-redef]

from ..bundle import PRECISIONS
from ..forecaster import ENGINES, NAN_POLICIES
from .clock import AGGREGATES, MAX_GAP_TICKS
from .slots import NotANode, check_node_id

_NUM = (int, float)
SERVE_NAN_POLICIES = tuple(p for p in NAN_POLICIES if p != "raise")     # a service never stops on a reading
SCHEMA = {
    "model": {"engine": str, "precision": str, "nan_policy": str, "intervals": bool, "streams": int,
              "period_s": _NUM, "nodes": list, "nodes_regex": str, "slot_idle_s": _NUM,
              "device_name": str},
    "clock": {"aggregate": str, "grace_s": _NUM, "max_gap_ticks": int, "max_future_s": _NUM, "active_ticks": int},
    "mqtt": {"broker": str, "client_id": str, "username": str, "password": str, "password_file": str,
             "tls": bool, "tls_ca": str, "tls_cert": str, "tls_key": str, "keepalive": int, "qos": int,
             "base_topic": str, "stats_every_s": _NUM, "homeassistant": bool, "discovery_prefix": str,
             "subscribe": list, "publish": list},
    "serial": {"url": str, "baudrate": int, "format": str, "node": str},
    "stdin": {"enabled": bool, "node": str},
    "csv": {"path": str, "rotate_bytes": int, "keep": int},
    "stdout": {"enabled": bool},
    "state": {"dir": str, "checkpoint_every": int},
    "capture": {"enabled": bool, "path": str, "capture_days": _NUM, "capture_mb": _NUM},
    "shadow": {"bundle": str, "auto_rollback": bool, "retrain_window": int},
}
SECRETS = ("password",)       # keys whose value no error shows
ITEMS = {"subscribe": {"topic": str, "fields": dict, "ignore_extra_fields": bool, "qos": int},
         "publish": {"topic": str, "qos": int, "retain": bool}}
DEFAULTS = {
    "model": {"engine": "auto", "precision": "fp32", "nan_policy": "hold", "intervals": False, "streams": 64,
              "nodes": []},
    "clock": {"aggregate": "mean", "max_gap_ticks": MAX_GAP_TICKS, "active_ticks": 3},
    "mqtt": {"keepalive": 30, "qos": 1, "base_topic": "gru-edge/{client_id}", "stats_every_s": 60.0,
             "homeassistant": False, "discovery_prefix": "homeassistant", "subscribe": [], "publish": []},
    "serial": {"baudrate": 115200, "format": "csv", "node": "serial"},
    "stdin": {"enabled": False, "node": "stdin"},
    "csv": {"rotate_bytes": 50_000_000, "keep": 5},
    "stdout": {"enabled": False},
    "state": {"checkpoint_every": 60},
    "capture": {"enabled": False, "capture_days": 90, "capture_mb": 100},
    "shadow": {"auto_rollback": False, "retrain_window": 1000},
}


class ConfigError(ValueError):
    """A configuration key that is unknown, of the wrong type or out of range; names the key."""


def _check_table(where: str, table, allowed: dict) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key; expected one of {', '.join(allowed)}")
        want = allowed[key]
        if isinstance(value, bool) and want is not bool or not isinstance(value, want):
            names = "/".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            shown = f"<{type(value).__name__}, not shown>" if key in SECRETS else repr(str(value)[:40])
            raise ConfigError(f"{where}.{key} = {shown}: expected {names}")
        if isinstance(value, float) and not math.isfinite(value):        # TOML and flags both allow nan, inf
            raise ConfigError(f"{where}.{key} = {value}: expected a finite number")


def _check_line_nodes(cfg: dict) -> None:
    """The node of a serial or stdin line without a node column: a node id like any other."""
    for section in ("serial", "stdin"):
        try:
            check_node_id(cfg[section]["node"])
        except NotANode as e:
            raise ConfigError(f"{section}.node: {e}") from None


def check(cfg: dict) -> dict:
    """Types, ranges and choices of a merged config; returns it."""
    for section, table in cfg.items():
        if section not in SCHEMA:
            raise ConfigError(f"[{section}]: unknown section; expected one of {', '.join(SCHEMA)}")
        _check_table(section, table, SCHEMA[section])
    _check_topics(cfg["mqtt"])
    m, c, q = cfg["model"], cfg["clock"], cfg["mqtt"]
    _choice("model.engine", m["engine"], ENGINES)
    _choice("model.precision", m["precision"], PRECISIONS)
    _choice("model.nan_policy", m["nan_policy"], SERVE_NAN_POLICIES)
    _choice("clock.aggregate", c["aggregate"], AGGREGATES)
    _choice("serial.format", cfg["serial"]["format"], ("csv", "json"))
    _choice("mqtt.qos", q["qos"], (0, 1, 2))
    for key, v, lo in (("model.streams", m["streams"], 1), ("clock.max_gap_ticks", c["max_gap_ticks"], 1),
                       ("state.checkpoint_every", cfg["state"]["checkpoint_every"], 0),
                       ("csv.rotate_bytes", cfg["csv"]["rotate_bytes"], 1024), ("csv.keep", cfg["csv"]["keep"], 1),
                       ("mqtt.stats_every_s", q["stats_every_s"], 0.1),
                       ("shadow.retrain_window", cfg["shadow"]["retrain_window"], 1), ("clock.grace_s", c.get("grace_s", 0), 0)):
        if v < lo:
            raise ConfigError(f"{key} = {v}: expected >= {lo}")
    if (q["subscribe"] or q["publish"] or q["homeassistant"]) and not q.get("broker"):
        raise ConfigError("MQTT topics are configured but no broker: set [mqtt] broker or pass --broker host:port")
    if q.get("broker"):
        broker_address(q["broker"])
    _check_bounds(cfg)
    _check_templates(q)
    _check_allowlist(m)
    _check_line_nodes(cfg)
    _check_capture(cfg)
    if q.get("password") is not None and q.get("password_file"):
        raise ConfigError("mqtt.password and mqtt.password_file are both set: keep password_file only")
    tls_context(q)
    if not (q["subscribe"] or cfg["serial"].get("url") or cfg["stdin"]["enabled"]):
        raise ConfigError("no source: give --subscribe TOPIC (with --broker), --serial URL or --stdin")
    if not (q["publish"] or cfg["csv"].get("path") or cfg["stdout"]["enabled"]):
        raise ConfigError("no sink: give --publish TOPIC (with --broker), --csv PATH or --stdout")
    return cfg


def _check_topics(mqtt: dict) -> None:
    """Each [[mqtt.subscribe]] / [[mqtt.publish]] item: known keys, a topic, a valid QoS."""
    for kind, allowed in ITEMS.items():
        for i, item in enumerate(mqtt[kind]):
            _check_table(f"mqtt.{kind}[{i}]", item, allowed)
            if "topic" not in item:
                raise ConfigError(f"mqtt.{kind}[{i}]: needs a topic")
            if item.get("qos", 1) not in (0, 1, 2):
                raise ConfigError(f"mqtt.{kind}[{i}].qos = {item['qos']}: expected 0, 1 or 2")


# Upper bounds (and lower ones the check above has not), each what the part that uses the value takes:
# paho's keepalive is 16 bits; past 100,000 streams the per-stream arrays alone run into gigabytes; a
# period outside 1 ms to a year overflows the period index; csv.keep files are renamed one by one.
BOUNDS = {("model", "streams"): (1, 100_000), ("model", "period_s"): (1e-3, 3.2e7),
          ("mqtt", "keepalive"): (1, 65535), ("serial", "baudrate"): (1, 20_000_000),
          ("clock", "max_future_s"): (0, 3.2e7), ("clock", "active_ticks"): (1, 1_000_000),
          ("csv", "keep"): (1, 1000)}


def _check_bounds(cfg: dict) -> None:
    for (section, key), (lo, hi) in BOUNDS.items():
        v = cfg[section].get(key)
        if v is not None and not lo <= v <= hi:
            raise ConfigError(f"{section}.{key} = {v}: expected {lo:g} to {hi:g}")


def _check_templates(q: dict) -> None:
    """MQTT topics that serve fills in and publishes: only their own placeholders, no wildcard."""
    items = [(f"mqtt.publish[{i}].topic", item["topic"], ("node",)) for i, item in enumerate(q["publish"])]
    items += [("mqtt.base_topic", q["base_topic"], ("client_id",)), ("mqtt.discovery_prefix", q["discovery_prefix"], ())]
    for key, text, names in items:
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
        except ValueError as e:
            raise ConfigError(f"{key} = {text[:60]!r}: {e}") from None
        bad = [f for f, spec, conv in fields if f not in names or spec or conv]
        if bad:
            raise ConfigError(f"{key} = {text[:60]!r}: {{{bad[0][:20]}}} is no placeholder here; expected "
                              + (" ".join(f"{{{n}}}" for n in names) or "none"))
        if "+" in text or "#" in text or "\0" in text or not text:
            raise ConfigError(f"{key} = {text[:60]!r}: a topic serve publishes to has no MQTT wildcard (+, #) "
                              "and is not empty")


def _check_capture(cfg: dict) -> None:
    c = cfg["capture"]
    for key, lo in (("capture_days", 0), ("capture_mb", 0.5)):
        if not c[key] > lo:
            raise ConfigError(f"capture.{key} = {c[key]}: expected a number > {lo}")
    if c["enabled"] and not (c.get("path") or cfg["state"].get("dir")):
        raise ConfigError("capture is on but there is no state dir for capture.db: give --state-dir DIR "
                          "(or [capture] path)")


def default_state_dir(bundle: str) -> str | None:
    """`<root>/state` when `bundle` is a device root's `current` release (flash/device.py's layout), else None."""
    path = os.path.abspath(bundle)
    root = os.path.dirname(path)
    if os.path.basename(path) == "current" and os.path.isdir(os.path.join(root, "releases")):
        return os.path.join(root, "state")
    return None


def default_shadow(bundle: str) -> str | None:
    """`<root>/shadow` when `bundle` is a device root's `current` release and a shadow was flashed, else None."""
    state = default_state_dir(bundle)
    shadow = os.path.join(os.path.dirname(state), "shadow") if state else None
    return shadow if shadow and os.path.isdir(shadow) else None


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r}: expected one of {', '.join(map(str, allowed))}")


def _check_allowlist(m: dict) -> None:
    bad = [n for n in m["nodes"] if not isinstance(n, str) or not n]
    if bad:
        raise ConfigError(f"model.nodes: {str(bad[0])[:40]!r} is no node id; expected a list of non-empty strings")
    if "nodes_regex" in m:
        try:
            if not m["nodes_regex"]:
                raise re.error("empty")
            re.compile(m["nodes_regex"])
        except re.error as e:
            raise ConfigError(f"model.nodes_regex = {m['nodes_regex'][:60]!r}: not a usable regular expression "
                              f"({e})") from None
    if "device_name" in m and not (0 < len(m["device_name"]) <= 200 and m["device_name"].isprintable()):
        raise ConfigError(f"model.device_name = {m['device_name'][:40]!r}: expected this device's name in the collected "
                          "data (1 to 200 printable characters)")
    if m.get("slot_idle_s") is not None and not m["slot_idle_s"] > 0:
        raise ConfigError(f"model.slot_idle_s = {m['slot_idle_s']}: expected seconds > 0 (leave it out: slots never "
                          "expire)")


def broker_address(text: str) -> tuple:
    if "@" in text:              # user:password@host: never echoed
        raise ConfigError("mqtt.broker holds credentials ('@'): expected host:port; set username and password_file")
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "1883")
    if not host or len(host) > 253 or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"mqtt.broker = {text!r}: expected host:port, e.g. 127.0.0.1:1883")
    return host, int(port)


def _private_file(key: str, path: str) -> bytes:
    """The bytes of a secret file that only its owner may read; ConfigError naming key, file and mode."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"mqtt.{key} {path}: cannot read it ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise ConfigError(f"mqtt.{key} {path}: mode {mode:04o} lets group or others read it; "
                              f"run chmod 600 {path}")
        return f.read(1 << 17)


def mqtt_password(q: dict) -> str | None:
    """The broker password: from [mqtt] password_file (owner-only), else the legacy password key."""
    if not q.get("password_file"):
        return q.get("password")
    try:
        text = _private_file("password_file", q["password_file"]).decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"mqtt.password_file {q['password_file']}: not UTF-8 text") from None
    if not text:
        raise ConfigError(f"mqtt.password_file {q['password_file']}: is empty")
    return text


def _no_passphrase():
    raise ConfigError("mqtt.tls_key: the key is encrypted; give an unencrypted key with mode 600")


def tls_context(q: dict) -> ssl.SSLContext | None:
    """The TLS context of [mqtt], None without TLS. The broker's certificate is verified (against
    tls_ca, or the system's CAs) and so is its host name; a client certificate is optional."""
    files = [k for k in ("tls_ca", "tls_cert", "tls_key") if q.get(k)]
    if q.get("tls") is False and files:
        raise ConfigError(f"mqtt.tls = false beside mqtt.{files[0]}: TLS is not turned off silently; remove one")
    if not (q.get("tls") or files):
        return None
    if q.get("tls_key") and not q.get("tls_cert"):
        raise ConfigError("mqtt.tls_key needs mqtt.tls_cert (the client certificate)")
    key = "tls_ca"
    try:
        ctx = ssl.create_default_context(cafile=q.get("tls_ca"))     # CERT_REQUIRED and check_hostname
        ctx.check_hostname, ctx.verify_mode = True, ssl.CERT_REQUIRED
        if q.get("tls_cert"):
            key = "tls_cert"
            if q.get("tls_key"):
                _private_file("tls_key", q["tls_key"])
            ctx.load_cert_chain(q["tls_cert"], q.get("tls_key"), password=_no_passphrase)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"mqtt.{key} {q.get(key) or '(system CAs)'}: cannot use it ({e.strerror or e})") from None
    return ctx


def read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def merge(file_cfg: dict, flags: dict) -> dict:
    """Defaults, then the file, then the flags that were given ({section: {key: value}})."""
    cfg = copy.deepcopy(DEFAULTS)
    for source in (file_cfg, flags):
        if isinstance(source.get("model"), dict) and source["model"].get("nodes") == []:
            raise ConfigError("model.nodes is empty: list the node ids to serve, or leave the key out to serve any node")
        for section, table in source.items():
            if section not in cfg:
                cfg[section] = table            # check() names the unknown section
            elif not isinstance(table, dict):   # (every known section is a table)
                raise ConfigError(f"[{section}] is {str(table)[:40]} ({type(table).__name__}); expected a table "
                                  f"of keys ([{section}] on a line of its own, its keys below it)")
            else:
                cfg[section].update(table)
    cfg["mqtt"].setdefault("client_id", f"gru-edge-{socket.gethostname()}")
    check(cfg)
    if cfg["mqtt"].get("password_file"):
        cfg["mqtt"]["password"] = mqtt_password(cfg["mqtt"])     # checked here, at start; read once
    return cfg
