"""Publish a CSV of readings to MQTT, one JSON message per row, as a sensor node would.

    python examples/publish_csv.py reports/demo_readings.csv --topic sensors/kitchen/state \
        [--broker 127.0.0.1:1883] [--every 0.05]

Numeric cells become numbers, empty ones null; a `time`/`date`/`timestamp` column is sent as
the message's event time, so `runtime serve` places each row in its own period however fast
the rows are sent. Needs paho-mqtt 2.x (pip install 'gru-edge-runtime[mqtt]').
"""
import argparse
import csv
import json
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIME_COLUMNS = ("time", "timestamp", "date")


def cell(text: str):
    try:
        return float(text) if text.strip() else None
    except ValueError:
        return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("--topic", required=True)
    p.add_argument("--broker", default="127.0.0.1:1883")
    p.add_argument("--every", type=float, default=0.0, help="seconds between rows (default: as fast as possible)")
    a = p.parse_args()
    host, port = a.broker.rsplit(":", 1)
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(host, int(port))
    c.loop_start()
    sent = []
    with open(a.csv, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            msg = {k: (v if k in TIME_COLUMNS else cell(v)) for k, v in row.items()}
            sent.append(c.publish(a.topic, json.dumps(msg), qos=1))
            if a.every:
                time.sleep(a.every)
    for info in sent:
        info.wait_for_publish(10)
    c.loop_stop()
    c.disconnect()
    print(f"published {len(sent)} readings to {a.topic}")


if __name__ == "__main__":
    main()
