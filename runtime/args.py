"""Number flags of every command line (train, export, quantize, flash): one parse rule.

A number flag is a finite number within its range; anything else (nan, inf, a negative count, a
zero batch) stops at parse with argparse's usage line naming the flag and the range, before any
work. nan needs the explicit test: it compares false with every bound.
"""
from __future__ import annotations

import argparse
import math

_INVOKED_AS = None          # set by `gru-edge` (runtime/cli.py) before it calls a module's main


def invoked_as(prog: str | None) -> None:
    """Name the command the user typed (`gru-edge train`) for the next parser's usage line."""
    global _INVOKED_AS
    _INVOKED_AS = prog


def prog(module_form: str) -> str:
    """A parser's program name: what the user typed (`gru-edge ...`), else the module form."""
    return _INVOKED_AS or module_form


def number(flag: str, kind: type, lo: float, hi: float, lo_open: bool = False):
    """An argparse type: `kind` (int or float) from lo to hi (lo itself excluded with lo_open)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not math.isfinite(v) or not (lo < v if lo_open else lo <= v) or not v <= hi:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected a {'whole ' if kind is int else ''}number "
                                             f"from {lo:g} ({'excluded' if lo_open else 'included'}) to {hi:g}")
        return v
    return parse
