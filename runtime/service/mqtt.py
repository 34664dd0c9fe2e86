"""The service's one MQTT connection (paho-mqtt 2.x, the `[mqtt]` extra), imported only when used.

MQTT 5 with a fixed client id, `clean_start=False` and a session that outlives a disconnect,
QoS 1 subscriptions: readings the broker kept while the service or the broker was down arrive
after the reconnect (paho reconnects with backoff on its own network thread). A retained
`<base>/status` says `online`; the last will says `offline` when the connection dies.
Incoming messages go onto the service's queue unparsed: the network thread does nothing else,
and acknowledges nothing: the service does (`ack`), once a reading is in a period.
Over TLS (an `ssl.SSLContext` from `config.tls_context`) the broker's certificate and host name
are verified. A failed connection (refused, bad password, certificate) is one log line per
distinct reason, never the password, while paho keeps retrying with backoff (1 s doubling to 30 s).
"""
from __future__ import annotations

import sys
import time

SESSION_EXPIRY_S = 7 * 24 * 3600       # the broker keeps our subscriptions and queued readings a week


def _paho():
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
    except ImportError:
        raise RuntimeError("serving over MQTT needs paho-mqtt 2.x: pip install 'gru-edge-runtime[mqtt]'") from None
    return mqtt, CallbackAPIVersion, PacketTypes, Properties


class MqttLink:
    """Subscribes the sources' topics, publishes forecasts, status and stats."""

    def __init__(self, host: str, port: int, client_id: str, base_topic: str, subscriptions, queue,
                 keepalive: int = 30, username: str | None = None, password: str | None = None, tls=None):
        mqtt, api, packet_types, properties = _paho()
        self.status_topic = f"{base_topic}/status"
        self.subscriptions, self.queue = list(subscriptions), queue      # [(topic filter, qos)]
        self.connects, self.disconnects = 0, 0
        self._connected, self._closing, self._failure, self.address = False, False, None, f"{host}:{port}"
        # Manual acknowledgement: a QoS 1 reading is acknowledged by the service once it is in a
        # period (or dropped and counted); what is still queued at a SIGTERM or a crash is redelivered.
        c = mqtt.Client(api.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        if username:
            c.username_pw_set(username, password)
        if tls is not None:
            c.tls_set_context(tls)
        elif password and not (host == "localhost" or host.startswith("127.") or host == "::1"):
            print(f"mqtt: warning: the password to {self.address} travels in clear text; set [mqtt] tls_ca",
                  file=sys.stderr)
        c.will_set(self.status_topic, "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_queued_messages_set(0)            # publishes while disconnected wait, unbounded
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message
        c.on_connect_fail = self._on_connect_fail
        props = properties(packet_types.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client = c
        c.connect_async(host, port, keepalive=keepalive, clean_start=False, properties=props)
        c.loop_start()

    def _failed(self, why: str) -> None:
        """One line per distinct reason in a row: a retry every 30 s does not flood the log."""
        if why != self._failure:
            self._failure = why
            print(f"mqtt: {why}; retrying with backoff", file=sys.stderr)

    def _on_connect_fail(self, client, userdata):
        error = sys.exc_info()[1]       # paho calls this inside its `except OSError` around the connect
        self._failed(f"cannot connect to {self.address}: {getattr(error, 'strerror', None) or error or 'failed'}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._failed(f"connect refused: {reason_code} (broker {self.address})")
            return
        self.connects, self._failure = self.connects + 1, None
        self._connected = True
        for topic, qos in self.subscriptions:
            client.subscribe(topic, qos=qos)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        resumed = " (session resumed)" if flags.session_present else ""
        print(f"mqtt: connected{resumed}; subscribed {', '.join(t for t, _ in self.subscriptions) or 'nothing'}",
              file=sys.stderr)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self._connected and not self._closing:
            self.disconnects += 1
            print(f"mqtt: disconnected ({reason_code}); reconnecting with backoff", file=sys.stderr)
        self._connected = False

    def _on_message(self, client, userdata, msg):
        ack = (msg.mid, msg.qos) if msg.qos > 0 else None
        self.queue.put(("mqtt", msg.topic, msg.payload, time.time(), ack))

    def ack(self, token: tuple) -> None:
        """Acknowledge one message `_on_message` queued (its (mid, qos)); in arrival order."""
        self.client.ack(*token)

    @property
    def connected(self) -> bool:
        return self._connected

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def close(self) -> None:
        """`offline` on the status topic (a clean disconnect sends no will), then disconnect."""
        self._closing = True
        if self._connected:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            end = time.monotonic() + 2.0          # polled: timed condition waits can hang under QEMU
            while not info.is_published() and self._connected and time.monotonic() < end:
                time.sleep(0.02)
        self.client.disconnect()
        self.client.loop_stop()
