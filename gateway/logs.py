"""Structured logging: one JSON object per line, carrying node, user and gift ids."""

from __future__ import annotations

import logging
import sys
import time

import orjson

#: LogRecord attributes that are not structured context.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node_id,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ThrottledLog:
    """A warning that a peer can cause, logged at most ``burst`` times per ``period_s``:
    a flood of bad requests must not become a flood of log lines. What was held back is
    counted in the next line that gets through (``suppressed``)."""

    def __init__(self, logger: logging.Logger, message: str, burst: int = 10, period_s: float = 10.0) -> None:
        self.logger, self.message = logger, message
        self.burst, self.period_s = burst, period_s
        self._window_start = -period_s
        self._logged = 0
        self._suppressed = 0

    def log(self, **context: object) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.period_s:
            self._window_start, self._logged = now, 0
        if self._logged >= self.burst:
            self._suppressed += 1
            return
        self._logged += 1
        extra = dict(context, suppressed=self._suppressed) if self._suppressed else context
        self._suppressed = 0
        # The context in the text too: the text format (notecard dev) shows no extra fields.
        details = ", ".join(f"{key} {value}" for key, value in extra.items())
        self.logger.warning("%s (%s)", self.message, details, extra=extra)


def configure_logging(level: str, fmt: str, node_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{node_id}] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every failed handshake at INFO; ours are enough.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
