"""TensorFlow's and absl's own log lines kept off stderr while gradprobe runs a script.

Set before the script imports TensorFlow; a value the user set in the environment is kept.
``TF_CPP_MIN_LOG_LEVEL=2`` hides TensorFlow's C++ INFO and WARNING lines (CPU feature notes,
TensorRT, rendezvous chatter); errors still show. The Python loggers ``tensorflow`` and
``absl`` are raised to ERROR unless the user configured them. The lines TensorFlow writes
before its logging is initialised (the oneDNN note) cannot be hidden without changing how it
computes (``TF_ENABLE_ONEDNN_OPTS``), so they stay.
"""

from __future__ import annotations

import logging
import os
from typing import MutableMapping

QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}
QUIET_LOGGERS = ("tensorflow", "absl")


def quiet_framework_logs(environ: MutableMapping[str, str] = os.environ) -> None:
    """Silence TensorFlow's and absl's informational logging, keeping what the user set."""
    for name, value in QUIET_ENVIRONMENT.items():
        environ.setdefault(name, value)
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
