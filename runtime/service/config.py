"""`serve` configuration: a TOML file (`--config device.toml`), flags on top. Every key checked.

    [model]   engine, precision, nan_policy ("hold"|"mean"), intervals, streams, period_s
    [clock]   aggregate ("mean"|"last"), grace_s, max_gap_ticks, max_future_s, active_ticks
    [mqtt]    broker ("host:port"), client_id, username, password, keepalive, qos, base_topic,
              stats_every_s, homeassistant, discovery_prefix
    [[mqtt.subscribe]]  topic ("sensors/+/state", "sensors/{node}/{feature}"), fields
                        ({feature = "payload key"}), ignore_extra_fields, qos
    [[mqtt.publish]]    topic ("forecasts/{node}"), qos, retain
    [serial]  url (a device or any pyserial URL), baudrate, format ("csv"|"json"), node
    [stdin]   enabled, node
    [csv]     path, rotate_bytes, keep
    [stdout]  enabled
    [state]   dir, checkpoint_every
"""
from __future__ import annotations

import copy
import socket

try:
    import tomllib
except ModuleNotFoundError:          # Python < 3.11
    import tomli as tomllib          # type: ignore[no-redef]

_NUM = (int, float)
SCHEMA = {
    "model": {"engine": str, "precision": str, "nan_policy": str, "intervals": bool, "streams": int,
              "period_s": _NUM},
    "clock": {"aggregate": str, "grace_s": _NUM, "max_gap_ticks": int, "max_future_s": _NUM, "active_ticks": int},
    "mqtt": {"broker": str, "client_id": str, "username": str, "password": str, "keepalive": int, "qos": int,
             "base_topic": str, "stats_every_s": _NUM, "homeassistant": bool, "discovery_prefix": str,
             "subscribe": list, "publish": list},
    "serial": {"url": str, "baudrate": int, "format": str, "node": str},
    "stdin": {"enabled": bool, "node": str},
    "csv": {"path": str, "rotate_bytes": int, "keep": int},
    "stdout": {"enabled": bool},
    "state": {"dir": str, "checkpoint_every": int},
}
ITEMS = {"subscribe": {"topic": str, "fields": dict, "ignore_extra_fields": bool, "qos": int},
         "publish": {"topic": str, "qos": int, "retain": bool}}
DEFAULTS = {
    "model": {"engine": "auto", "precision": "fp32", "nan_policy": "hold", "intervals": False, "streams": 64},
    "clock": {"aggregate": "mean", "max_gap_ticks": 30, "active_ticks": 3},
    "mqtt": {"keepalive": 30, "qos": 1, "base_topic": "gru-edge/{client_id}", "stats_every_s": 60.0,
             "homeassistant": False, "discovery_prefix": "homeassistant", "subscribe": [], "publish": []},
    "serial": {"baudrate": 115200, "format": "csv", "node": "serial"},
    "stdin": {"enabled": False, "node": "stdin"},
    "csv": {"rotate_bytes": 50_000_000, "keep": 5},
    "stdout": {"enabled": False},
    "state": {"checkpoint_every": 60},
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
            raise ConfigError(f"{where}.{key} = {str(value)[:40]!r}: expected {names}")


def check(cfg: dict) -> dict:
    """Types, ranges and choices of a merged config; returns it."""
    for section, table in cfg.items():
        if section not in SCHEMA:
            raise ConfigError(f"[{section}]: unknown section; expected one of {', '.join(SCHEMA)}")
        _check_table(section, table, SCHEMA[section])
    for kind, allowed in ITEMS.items():
        for i, item in enumerate(cfg["mqtt"][kind]):
            _check_table(f"mqtt.{kind}[{i}]", item, allowed)
            if "topic" not in item:
                raise ConfigError(f"mqtt.{kind}[{i}]: needs a topic")
            if item.get("qos", 1) not in (0, 1, 2):
                raise ConfigError(f"mqtt.{kind}[{i}].qos = {item['qos']}: expected 0, 1 or 2")
    m, c, q = cfg["model"], cfg["clock"], cfg["mqtt"]
    _choice("model.nan_policy", m["nan_policy"], ("hold", "mean"))
    _choice("clock.aggregate", c["aggregate"], ("mean", "last"))
    _choice("serial.format", cfg["serial"]["format"], ("csv", "json"))
    _choice("mqtt.qos", q["qos"], (0, 1, 2))
    for key, v, lo in (("model.streams", m["streams"], 1), ("clock.max_gap_ticks", c["max_gap_ticks"], 1),
                       ("state.checkpoint_every", cfg["state"]["checkpoint_every"], 0),
                       ("csv.rotate_bytes", cfg["csv"]["rotate_bytes"], 1024), ("csv.keep", cfg["csv"]["keep"], 1),
                       ("mqtt.stats_every_s", q["stats_every_s"], 0.1), ("clock.grace_s", c.get("grace_s", 0), 0)):
        if v < lo:
            raise ConfigError(f"{key} = {v}: expected >= {lo}")
    if (q["subscribe"] or q["publish"] or q["homeassistant"]) and not q.get("broker"):
        raise ConfigError("MQTT topics are configured but no broker: set [mqtt] broker or pass --broker host:port")
    if q.get("broker"):
        broker_address(q["broker"])
    if not (q["subscribe"] or cfg["serial"].get("url") or cfg["stdin"]["enabled"]):
        raise ConfigError("no source: give --subscribe TOPIC (with --broker), --serial URL or --stdin")
    if not (q["publish"] or cfg["csv"].get("path") or cfg["stdout"]["enabled"]):
        raise ConfigError("no sink: give --publish TOPIC (with --broker), --csv PATH or --stdout")
    return cfg


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r}: expected one of {', '.join(map(str, allowed))}")


def broker_address(text: str) -> tuple:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "1883")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"mqtt.broker = {text!r}: expected host:port, e.g. 127.0.0.1:1883")
    return host, int(port)


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
        for section, table in source.items():
            if section not in cfg:
                cfg[section] = table            # check() names the unknown section
            elif isinstance(table, dict):
                cfg[section].update(table)
            else:
                cfg[section] = table
    cfg["mqtt"].setdefault("client_id", f"gru-edge-{socket.gethostname()}")
    return check(cfg)
