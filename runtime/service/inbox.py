"""The main loop's inbox: what the transport threads hand to `serve`'s one thread."""
from __future__ import annotations

import collections
import os
import select
import signal


class Inbox:
    """Messages from the transport threads to the main loop: a deque and a self-pipe, waited on
    with select() (a timed lock or futex wait, which queue.SimpleQueue uses, was seen never to
    return under QEMU user mode). Signals wake the wait too (signal.set_wakeup_fd)."""

    def __init__(self):
        self._items = collections.deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def put(self, item) -> None:
        self._items.append(item)
        if len(self._items) == 1:              # the reader drains to empty before it waits again
            try:
                os.write(self._w, b"\0")
            except BlockingIOError:
                pass                           # the pipe is full: the reader is due to wake anyway

    def wait(self, timeout: float) -> None:
        if not self._items:
            select.select([self._r], [], [], timeout)
        try:
            os.read(self._r, 1 << 16)
        except BlockingIOError:
            pass

    def pop(self):
        return self._items.popleft()

    def wake_on_signals(self) -> None:
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
