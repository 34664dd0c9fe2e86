"""Run `python -m runtime ...` with a wall clock that steps while it runs, as NTP steps a device's:
time.time() is the real time plus the seconds in the file $FAKE_OFFSET_FILE (read again when it
changes); time.monotonic() is untouched, as on Linux. Used by tests/test_serve_clock_steps.py."""
import os
import runpy
import sys
import time

_real, _path, _seen = time.time, os.environ["FAKE_OFFSET_FILE"], [None, 0.0]


def _offset() -> float:
    try:
        mtime = os.stat(_path).st_mtime_ns
        if mtime != _seen[0]:
            with open(_path) as f:
                _seen[:] = [mtime, float(f.read().strip() or 0)]
    except (OSError, ValueError):
        pass
    return _seen[1]


time.time = lambda: _real() + _offset()
sys.argv = ["runtime"] + sys.argv[1:]
runpy.run_module("runtime", run_name="__main__", alter_sys=True)
