"""`runtime serve` to a password-protected mosquitto over TLS (hostile case 15): a throwaway CA
and certificates made with the `openssl` CLI, a `password_file` made with `mosquitto_passwd` and
an ACL. The password never travels or shows in clear, and a failure is one log line while the
service keeps retrying."""
import getpass
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, LoopbackMosquitto, free_port

mqtt = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("mosquitto_passwd")),
                                reason="needs the openssl and mosquitto_passwd commands")
T0 = 1_700_000_400                   # as in test_serve: a multiple of the test periods
SECRET, WRONG = "s3cret-987654321", "wrong-123456789"
LEAF = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n")          # what Python 3.13's strict X.509 checks want


def _openssl(folder, *args):
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def make_pki(folder):
    """ca.pem; server.pem for 127.0.0.1 and localhost; local.pem for localhost only; client.pem."""
    _openssl(folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gru-edge test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                      ("local", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        with open(os.path.join(folder, f"{name}.ext"), "w") as f:
            f.write(LEAF + ext)
        _openssl(folder, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
        os.chmod(os.path.join(folder, f"{name}.key"), 0o600)


class TlsMosquitto(LoopbackMosquitto):
    """mosquitto with three TLS listeners on 127.0.0.1 (no plain one), a password file and an ACL:
    `tls` (server.pem), `mtls` (a client certificate required too), `local` (a certificate whose
    only name is localhost)."""

    def __init__(self, folder):
        self.folder, self.ports = folder, {k: free_port() for k in ("tls", "mtls", "local")}
        self.port, d = self.ports["tls"], folder
        make_pki(d)
        subprocess.run(["mosquitto_passwd", "-b", "-c", f"{d}/passwd", "gru", SECRET], check=True, capture_output=True)
        subprocess.run(["mosquitto_passwd", "-b", f"{d}/passwd", "pub", SECRET], check=True, capture_output=True)
        with open(f"{d}/acl", "w") as f:
            f.write("user gru\ntopic read sensors/#\ntopic write forecasts/#\ntopic readwrite gru-edge/#\n\n"
                    "user pub\ntopic write sensors/#\ntopic read forecasts/#\n")
        listener = "listener {} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/{}.pem\nkeyfile {d}/{}.key\n"
        self.conf = f"{d}/mosquitto.conf"
        with open(self.conf, "w") as f:
            f.write(f"per_listener_settings false\nallow_anonymous false\npassword_file {d}/passwd\nacl_file {d}/acl\n"
                    f"user {getpass.getuser()}\nlog_dest file {d}/mosquitto.log\n"
                    + listener.format(self.ports["tls"], "server", "server", d=d)
                    + listener.format(self.ports["mtls"], "server", "server", d=d) + "require_certificate true\n"
                    + listener.format(self.ports["local"], "local", "local", d=d))
        self.start()

    def log(self):
        with open(f"{self.folder}/mosquitto.log") as f:
            return f.read()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    b = TlsMosquitto(str(tmp_path_factory.mktemp("tls")))
    yield b
    b.stop()


class Serve:
    """`python -m runtime serve` as a subprocess with its stderr collected; waits for nothing."""

    def __init__(self, bundle, tmp_path, port, *extra, password=SECRET, mode=0o600):
        pw = tmp_path / "mqtt.password"
        pw.write_text(password + "\n")
        os.chmod(pw, mode)
        (tmp_path / "device.toml").write_text(f'[mqtt]\nusername = "gru"\npassword_file = "{pw}"\n')
        args = [sys.executable, "-m", "runtime", "serve", str(bundle), "--config", str(tmp_path / "device.toml"),
                "--broker", f"127.0.0.1:{port}", "--subscribe", "sensors/+/state", "--publish", "forecasts/{node}",
                "--engine", "numpy", "--grace-s", "0.5", "--client-id", f"svc-{tmp_path.name}", *extra]
        self.proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.err = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()

    def lines(self, text):
        return [line for line in self.err if text in line]

    def wait_for(self, text, timeout=20):
        end = time.monotonic() + timeout
        while not self.lines(text) and self.proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert self.lines(text), f"serve did not say {text!r}; stderr:\n{''.join(self.err)[-3000:]}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)
        time.sleep(0.1)                   # the stderr thread reads the last lines
        return "".join(self.err)


def readings(bundle, n):
    """n consecutive real readings of the bundle's build series (as test_serve.readings), its period."""
    with np.load(str(bundle) + ".build.npz") as z:
        x = z["inputs"][:n].astype(np.float64)
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    return [f["name"] for f in m["features"]], x, m["sample_period_s"] or 1.0


def tls_client(broker, user="pub", password=SECRET):
    """A paho client of the test over TLS (verified against the test CA), connected."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{time.time_ns()}", protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    c.tls_set_context(ssl.create_default_context(cafile=f"{broker.folder}/ca.pem"))
    c.connect("127.0.0.1", broker.ports["tls"])
    c.loop_start()
    return c


def test_serve_over_tls_with_a_password_file_forecasts(daphnet_bundle, tls_broker, tmp_path):
    """(a) CA, client certificate and password_file: connected over TLS, forecasts come back."""
    d = tls_broker.folder
    svc = Serve(daphnet_bundle, tmp_path, tls_broker.ports["mtls"], "--tls-ca", f"{d}/ca.pem",
                "--tls-cert", f"{d}/client.pem", "--tls-key", f"{d}/client.key")
    svc.wait_for("mqtt: connected")
    got = []                              # list.append is atomic: the network thread appends, the test reads
    sub = tls_client(tls_broker)
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.subscribe("forecasts/#", qos=1)
    time.sleep(0.3)
    pub = tls_client(tls_broker)
    features, x, period = readings(daphnet_bundle, 12)
    for i, row in enumerate(x):
        pub.publish("sensors/n1/state", json.dumps({"time": T0 + i * period, **dict(zip(features, map(float, row)))}),
                    qos=1).wait_for_publish(5)
    end = time.monotonic() + 20
    while len(got) < len(x) - 1 and time.monotonic() < end:
        time.sleep(0.05)
    err = svc.stop()
    sub.loop_stop(), pub.loop_stop()
    assert len(got) >= len(x) - 1 and got[0]["node"] == "n1", err[-2000:]
    assert SECRET not in err


def test_a_client_without_the_ca_is_refused_and_keeps_retrying(daphnet_bundle, tls_broker, tmp_path):
    """(b) TLS against the system's CAs only: the broker's certificate fails, one line, retries."""
    svc = Serve(daphnet_bundle, tmp_path, tls_broker.ports["tls"], "--tls")
    svc.wait_for("certificate verify failed")
    time.sleep(3.5)                       # attempts at 0, 1, 3 s
    assert svc.proc.poll() is None, "serve exited instead of retrying"
    err = svc.stop()
    assert len(svc.lines("certificate verify failed")) == 1 and "retrying with backoff" in err, err
    assert "Traceback" not in err and SECRET not in err


def test_a_wrong_password_is_one_line_and_retried_with_backoff(daphnet_bundle, tls_broker, tmp_path):
    """(c) Refused for the password (mosquitto 2.0 says "Not authorized", MQTT 5 also has "Bad user
    name or password"): one line, never the password, and paho retries (1 s, 2 s ...)."""
    before = len(tls_broker.log())
    svc = Serve(daphnet_bundle, tmp_path, tls_broker.ports["tls"], "--tls-ca", f"{tls_broker.folder}/ca.pem",
                password=WRONG)
    svc.wait_for("connect refused")
    time.sleep(3.5)
    assert svc.proc.poll() is None, "serve exited instead of retrying"
    err = svc.stop()
    refused = svc.lines("connect refused")
    assert len(refused) == 1 and "retrying with backoff" in refused[0], err
    assert "Not authorized" in refused[0] or "Bad user name or password" in refused[0], err
    assert WRONG not in err and SECRET not in err and "Traceback" not in err
    attempts = tls_broker.log()[before:].count("not authorised")      # the broker's side: tries at 0, 1, 3 s
    assert attempts >= 3, f"paho did not retry: {tls_broker.log()[before:]}"


def test_secrets_in_the_config_are_checked_and_never_echoed(daphnet_bundle, tmp_path):
    """(d) A password_file others can read is refused in one line naming file and mode; a
    mistyped password is not echoed; a TLS file that is missing is one line."""
    base = ["serve", str(daphnet_bundle), "--broker", "127.0.0.1:1", "--subscribe", "s/+/state", "--stdout"]
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    os.chmod(pw, 0o644)
    cases = (('password_file = "{pw}"', [str(pw), "0644", "chmod 600"]),
             ("password = 987654321", ["mqtt.password", "expected str"]),
             ('password = "x"\npassword_file = "{pw}"', ["password_file"]),
             ('tls_ca = "{tmp_path}/nope.pem"', ["mqtt.tls_ca", "nope.pem", "No such file"]),
             ('tls_key = "{pw}"', ["tls_key needs mqtt.tls_cert"]),
             ('tls = false\ntls_ca = "{pw}"', ["not turned off silently"]))
    for toml, want in cases:
        (tmp_path / "d.toml").write_text("[mqtt]\n" + toml.format(pw=pw, tmp_path=tmp_path) + "\n")
        p = subprocess.run([sys.executable, "-m", "runtime", *base, "--config", str(tmp_path / "d.toml")], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and all(w in lines[0] for w in want), (toml, p.stderr)
        assert "987654321" not in p.stderr and "Traceback" not in p.stderr


def test_hostname_verification_is_on(daphnet_bundle, tls_broker, tmp_path):
    """(e) A certificate signed by the trusted CA but naming only localhost, reached as 127.0.0.1."""
    d = tls_broker.folder
    svc = Serve(daphnet_bundle, tmp_path, tls_broker.ports["local"], "--tls-ca", f"{d}/ca.pem")
    svc.wait_for("certificate verify failed")
    err = svc.stop()
    assert "not valid for '127.0.0.1'" in svc.lines("certificate verify failed")[0], err      # not the CA: the name
    assert "mqtt: connected" not in err
    ctx = ssl.create_default_context(cafile=f"{d}/ca.pem")      # the same certificate by its name is fine
    with socket.create_connection(("127.0.0.1", tls_broker.ports["local"]), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert t.version()


def test_allowlist_keys_are_checked(daphnet_bundle, tmp_path):
    """[model] nodes / nodes_regex / slot_idle_s, also as --nodes, --nodes-regex, --slot-idle-s."""
    from runtime.service.config import ConfigError, merge
    base = {"mqtt": {"broker": "127.0.0.1:1883", "subscribe": [{"topic": "s/+/state"}], "publish": [{"topic": "f/{node}"}]}}
    cfg = merge(base, {"model": {"nodes": ["kitchen", "garage"], "nodes_regex": "garage-[0-9]+", "slot_idle_s": 600}})
    assert cfg["model"]["nodes"] == ["kitchen", "garage"] and cfg["model"]["slot_idle_s"] == 600
    assert merge(base, {})["model"]["nodes"] == [] and "slot_idle_s" not in merge(base, {})["model"]
    for bad, why in (({"nodes": [1]}, "model.nodes"), ({"nodes": "kitchen"}, "model.nodes"),
                     ({"nodes_regex": "garage-("}, "model.nodes_regex"), ({"slot_idle_s": 0}, "model.slot_idle_s")):
        with pytest.raises(ConfigError, match=why):
            merge(base, {"model": bad})
    base_args = ["serve", str(daphnet_bundle), "--stdin", "--stdout"]
    for flags, why in ((["--nodes", ""], "model.nodes is empty"), (["--nodes-regex", "a("], "model.nodes_regex"),
                       (["--slot-idle-s", "-1"], "model.slot_idle_s")):
        p = subprocess.run([sys.executable, "-m", "runtime", *base_args, *flags], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2 and why in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_config_values_that_would_fail_at_run_time_are_refused_at_start():
    """A hostile probe (2026-12-08): each of these passed the check and then killed a thread (the
    service ran on with no broker or no source), raised a traceback at the first tick or stats, or
    stopped every forecast (a publish topic's unknown placeholder: KeyError at every tick)."""
    from runtime.service.config import ConfigError, merge
    base = {"mqtt": {"broker": "127.0.0.1:1883", "subscribe": [{"topic": "s/+/state"}], "publish": [{"topic": "f/{node}"}]}}
    cases = [({"mqtt": {"publish": [{"topic": "f/{node}/{x}"}]}}, r"mqtt.publish\[0\].topic .*\{x\}.*expected \{node\}"),
             ({"mqtt": {"publish": [{"topic": "f/{0}"}]}}, r"mqtt.publish\[0\].topic"),
             ({"mqtt": {"publish": [{"topic": "f/+/{node}"}]}}, r"mqtt.publish\[0\].topic .*wildcard"),
             ({"mqtt": {"publish": [{"topic": "f/{node!r}"}]}}, r"mqtt.publish\[0\].topic"),
             ({"mqtt": {"base_topic": "a/+/b"}}, r"mqtt.base_topic .*wildcard"),
             ({"mqtt": {"base_topic": "a/{client_id}/{other}"}}, r"mqtt.base_topic .*\{other\}"),
             ({"mqtt": {"discovery_prefix": "ha/#"}}, r"mqtt.discovery_prefix .*wildcard"),
             ({"mqtt": {"keepalive": 100000}}, r"mqtt.keepalive = 100000: expected 1 to 65535"),
             ({"mqtt": {"broker": "h" * 300 + ":1883"}}, r"mqtt.broker .*host:port"),
             ({"model": {"streams": 100_000_000}}, r"model.streams = 100000000: expected 1 to 100000"),
             ({"model": {"period_s": 1e-300}}, r"model.period_s .*expected"),
             ({"model": {"period_s": 1e300}}, r"model.period_s .*expected"),
             ({"model": {"period_s": 0}}, r"model.period_s = 0: expected"),
             ({"serial": {"baudrate": -1}}, r"serial.baudrate = -1: expected"),
             ({"clock": {"max_future_s": -5}}, r"clock.max_future_s = -5: expected"),
             ({"clock": {"active_ticks": 0}}, r"clock.active_ticks = 0: expected"),
             ({"csv": {"path": "x.csv", "keep": 10**9}}, r"csv.keep = 1000000000: expected")]
    for extra, why in cases:
        over = {k: {**base.get(k, {}), **v} for k, v in extra.items()}
        with pytest.raises(ConfigError, match=why):
            merge({**base, **over}, {})
    assert merge(base, {"mqtt": {"base_topic": "site/{client_id}", "keepalive": 65535}})["mqtt"]["keepalive"] == 65535


def test_a_serial_url_pyserial_cannot_open_is_one_line_at_start(daphnet_bundle):
    """`bogus://x` killed the serial thread with a traceback; the service ran on with no source."""
    p = subprocess.run([sys.executable, "-m", "runtime", "serve", str(daphnet_bundle), "--serial", "bogus://x",
                        "--stdout", "--engine", "numpy"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: serial.url = 'bogus://x': invalid URL")
