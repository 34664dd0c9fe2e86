"""The service's one MQTT connection (paho-mqtt 2.x, the `[mqtt]` extra), imported only when used.

MQTT 5 with a fixed client id, `clean_start=False` and a session that outlives a disconnect,
QoS 1 subscriptions: readings the broker kept while the service or the broker was down arrive
after the reconnect (paho reconnects with backoff on its own network thread). A retained
`<base>/status` says `online`; the last will says `offline` when the connection dies.
Incoming messages go onto the service's queue unparsed: the network thread does nothing else.
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
        raise RuntimeError("serving over MQTT needs paho-mqtt 2.x: pip install 'gru-edge[mqtt]'") from None
    return mqtt, CallbackAPIVersion, PacketTypes, Properties


class MqttLink:
    """Subscribes the sources' topics, publishes forecasts, status and stats."""

    def __init__(self, host: str, port: int, client_id: str, base_topic: str, subscriptions, queue,
                 keepalive: int = 30, username: str | None = None, password: str | None = None):
        mqtt, api, packet_types, properties = _paho()
        self.status_topic = f"{base_topic}/status"
        self.subscriptions, self.queue = list(subscriptions), queue      # [(topic filter, qos)]
        self.connects, self.disconnects = 0, 0
        self._connected, self._closing = False, False
        c = mqtt.Client(api.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username:
            c.username_pw_set(username, password)
        c.will_set(self.status_topic, "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_queued_messages_set(0)            # publishes while disconnected wait, unbounded
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message
        props = properties(packet_types.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client = c
        c.connect_async(host, port, keepalive=keepalive, clean_start=False, properties=props)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"mqtt: connect refused: {reason_code}", file=sys.stderr)
            return
        self.connects += 1
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
        self.queue.put(("mqtt", msg.topic, msg.payload, time.time()))

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
