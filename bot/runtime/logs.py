"""Structured logs: one JSON object a line, with secrets never passed in to begin with.

Lines are bounded, so no input can fill the log: the message is cut at :data:`MAX_MESSAGE`
characters, each extra field at :data:`MAX_FIELD`, a traceback keeps its last
:data:`MAX_TRACEBACK` characters (where the error is), and the whole line never exceeds
:data:`MAX_LINE`. As a second line of defence, anything shaped like a Slack token, a Slack
``response_url`` or an authentication link's token is masked before the line is written.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

_STANDARD = set(vars(logging.makeLogRecord({})))

MAX_MESSAGE = 2000
MAX_FIELD = 500
MAX_TRACEBACK = 6000
MAX_LINE = 10_000
CUT = "…[cut]"

_SECRETS = (
    re.compile(r"xox[abeprs]-[A-Za-z0-9-]+"),  # Slack tokens
    re.compile(r"hooks\.slack\.com/[^\s\"'<>]+"),  # response_url and webhook URLs are capabilities
    re.compile(r"(?<=/auth/)[A-Za-z0-9_-]{43}"),  # authentication link tokens
)


def scrub(text: str) -> str:
    for pattern in _SECRETS:
        text = pattern.sub("[redacted]", text)
    return text


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(CUT)] + CUT


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else CUT + text[-(limit - len(CUT)) :]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _cut(scrub(record.getMessage()), MAX_MESSAGE),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                kept = value if isinstance(value, int | float | bool) or value is None else str(value)
                out[key[:64]] = _cut(scrub(kept), MAX_FIELD) if isinstance(kept, str) else kept
        if record.exc_info:
            out["exc"] = _tail(scrub(self.formatException(record.exc_info)), MAX_TRACEBACK)
        line = json.dumps(out, ensure_ascii=False)
        if len(line) > MAX_LINE:  # many extra fields, or escapes: keep what says what happened
            out = {k: out[k] for k in ("at", "level", "logger", "msg", "exc") if k in out}
            line = json.dumps(out, ensure_ascii=False)
        for _ in range(20):  # escaped control characters can still triple a message
            if len(line) <= MAX_LINE:
                break
            out["msg"] = _cut(str(out["msg"]), len(str(out["msg"])) // 2)
            if "exc" in out:
                out["exc"] = _tail(str(out["exc"]), len(str(out["exc"])) // 2)
            line = json.dumps(out, ensure_ascii=False)
        return line


class _Bounded(logging.Formatter):
    """The plain-text format, bounded and scrubbed the same way."""

    def format(self, record: logging.LogRecord) -> str:
        return _cut(scrub(super().format(record)), MAX_LINE)


def configure(level: str = "INFO", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else _Bounded("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Vendor loggers that would echo request bodies or URLs with tokens stay quiet.
    for noisy in ("httpx", "httpcore", "slack_bolt", "slack_sdk", "aiohttp.access", "botbuilder", "botframework"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # msrest warns "trigger is not a known attribute" on every Action.Execute (SDK-NOTES §9)
    logging.getLogger("msrest").setLevel(logging.ERROR)
