"""Third-party noise kept off the terminal of export and quantize.

Converting a GRU step prints about 15 lines that are no news to the user and read like failures:
the ONNX exporter's "torchvision is not installed" (4x), torch's pytree deprecations, torchao's
"Failed to load ..._C_cutlass_90a.so" (CUDA kernels on a CPU build), TensorFlow's oneDNN and absl
notices, and the LiteRT interpreter's XNNPACK line. Errors still reach the terminal; what export and
quantize check themselves (parity, drift, latency) is their own report.
"""
from __future__ import annotations

import logging
import os
import warnings

NOISY_LOGGERS = ("torch.onnx", "torch.utils._pytree", "torch.export", "torch._export", "torchao")


def quiet_libraries() -> None:
    """Call before the converters are imported (TensorFlow reads its log level once, at import)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`isinstance\(treespec, LeafSpec\)`")
    warnings.filterwarnings("ignore", category=UserWarning, message=r"# The axis name: .* will not be used")
