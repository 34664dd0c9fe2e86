"""A real mosquitto broker on loopback, started and stopped by the serve tests and the serve bench."""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class LoopbackMosquitto:
    """A real mosquitto broker on 127.0.0.1:port with persistence in `folder` (so a restart keeps
    persistent sessions and their queued QoS 1 messages, as a production broker would)."""

    def __init__(self, folder, port=None, stock_limits=False):
        """stock_limits: mosquitto's own queue limits (1,000 queued, 20 in flight per client: a
        burst beyond them is dropped), instead of the test's roomy ones."""
        if not os.path.exists(MOSQUITTO):
            raise RuntimeError("mosquitto is not installed (make test / make bench install it with apt-get)")
        self.folder, self.port = folder, port or free_port()
        self.conf = os.path.join(folder, "mosquitto.conf")
        limits = "" if stock_limits else "max_queued_messages 1000000\nmax_inflight_messages 1000\n"
        with open(self.conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {folder}/\nautosave_interval 1\n{limits}"
                    f"user {getpass.getuser()}\nlog_dest file {folder}/mosquitto.log\n")
        self.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()[-500:]}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
