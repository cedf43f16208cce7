"""Logging set-up: readable lines for people, or one JSON object per line for log pipelines."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg (+ exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise one record."""
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str = "INFO", fmt: str = "text", packages: Sequence[str] = ()) -> None:
    """Configure the root logger once, in main().

    With `packages`, only their loggers log at `level`; everything else (the libraries
    underneath) at WARNING and above.
    """
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if packages else level.upper())
    for package in packages:
        logging.getLogger(package).setLevel(level.upper())
