"""Logging set-up: one JSON object per line (orjson) for journald, or text for humans.

Library modules only call `logging.getLogger(__name__)` and pass structured
fields through `extra=`; this module, configured once by the CLI, renders them.
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

# A worker process's index (service/workers.py sets it), on each of its lines: the
# workers of one service write to one stream.
_WORKER = os.environ.get("OFFLOADER_WORKER")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if _WORKER is not None:
            event["worker"] = int(_WORKER)
        event.update(_fields(record))
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        fields = _fields(record)
        table = fields.pop("table", None)
        report = fields.pop("report", None)
        head = f"{ts} {record.levelname:<7} " + (f"w{_WORKER} " if _WORKER else "")
        head += f"[{table}] " if table else ""
        text = head + record.getMessage()
        if fields:
            text += " " + " ".join(f"{k}={_short(v)}" for k, v in fields.items())
        if report is not None:
            text += (
                f" rows={report.get('rows')} seconds={report.get('seconds')} ok={report.get('ok')}"
            )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def setup(fmt: str = "json", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Configure the root logger once (dictConfig)."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "json": {"()": JsonFormatter},
                "text": {"()": TextFormatter},
            },
            "handlers": {
                "main": {
                    "class": "logging.StreamHandler",
                    "formatter": fmt,
                    "stream": stream or sys.stderr,
                }
            },
            "root": {"level": level.upper(), "handlers": ["main"]},
            "loggers": {
                # Quiet chatty libraries; their warnings still show.
                "pyiceberg": {"level": "WARNING"},
                "asynch": {"level": "WARNING"},
                "asyncio": {"level": "WARNING"},
                "httpx": {"level": "WARNING"},  # a line per request otherwise
                "httpcore": {"level": "WARNING"},
            },
        }
    )
