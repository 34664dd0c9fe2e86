"""gru-edge runtime: stream sensor readings through a bundle's GRU step (numpy + one engine).

    >>> import runtime
    >>> fc = runtime.load("bundles/demo", engine="auto", precision="fp32")   # doctest: +SKIP
    >>> forecast = fc.step(reading)                                           # doctest: +SKIP
"""
from .bundle import BundleError, read_manifest
from .forecaster import Forecaster, load

__all__ = ["BundleError", "Forecaster", "load", "read_manifest"]
