"""Log lines of the gateway, the broker and the workers: text, or JSON objects one a line
(RERANKER_LOG_FORMAT=json), at RERANKER_LOG_LEVEL.

A line about one HTTP request carries its request id: in the gateway, `REQUEST_ID` holds it for the
request's task (set by gateway/tracing.py); the broker and the workers pass it as
`extra={"request_id": ...}` with the trace the request's task carries. JSON lines put it in the
`request_id` field; text lines end with `request_id=...`.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar

from .settings import Settings

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def _request_id(record: logging.LogRecord) -> str:
    return getattr(record, "request_id", None) or REQUEST_ID.get()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = _request_id(record)
        return f"{line} request_id={request_id}" if request_id else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, service, logger, pid, message, and
    request_id and exception where there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        request_id = _request_id(record)
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(settings: Settings, service: str) -> None:
    """Send every log line of this process to stderr, in the format and from the level the settings say.
    `service` names the program in JSON lines (gateway, broker, worker)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service) if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def gunicorn_logconfig(settings: Settings, service: str = "gateway") -> dict:
    """A gunicorn `logconfig_dict` that writes the gunicorn master's own lines (start, workers booted and
    stopped) in the same format as every other line."""
    formatter = {"()": JsonFormatter, "service": service} if settings.log_format == "json" else {"()": TextFormatter}
    handler = {"class": "logging.StreamHandler", "formatter": "reranker", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["reranker"], "level": settings.log_level.upper(), "propagate": False}
    # gunicorn lays this over its defaults key by key: every key it has is given here
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"reranker": formatter},
            "handlers": {"reranker": handler}, "loggers": {"gunicorn.error": logger, "gunicorn.access": logger},
            "root": {"level": settings.log_level.upper(), "handlers": ["reranker"]}}
