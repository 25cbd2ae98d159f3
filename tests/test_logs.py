"""Log lines are bounded and scrubbed, whatever is passed in."""

from __future__ import annotations

import json
import logging
import sys

from bot.runtime.logs import MAX_LINE, JsonFormatter


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "ackgate.test", "levelno": logging.INFO, "levelname": "INFO"})
    made.msg, made.args = msg, args or None
    for key, value in extra.items():
        setattr(made, key, value)
    if exc:
        try:
            raise ValueError("x" * 50_000)
        except ValueError:
            made.exc_info = sys.exc_info()
    return made


def test_a_huge_message_is_cut_and_the_line_stays_json() -> None:
    line = JsonFormatter().format(record("%s", "A" * 300_000))
    assert len(line) <= MAX_LINE
    assert json.loads(line)["msg"].endswith("…[cut]")


def test_control_characters_that_escape_to_six_bytes_still_fit() -> None:
    line = JsonFormatter().format(record("%s", "\x01" * 100_000, exc=True))
    assert len(line) <= MAX_LINE
    json.loads(line)


def test_a_huge_traceback_keeps_its_end_and_many_extras_are_dropped() -> None:
    extras = {f"field{n}": "v" * 400 for n in range(100)}
    line = JsonFormatter().format(record("failed", exc=True, **extras))
    assert len(line) <= MAX_LINE
    parsed = json.loads(line)
    assert parsed["msg"] == "failed"
    assert parsed["exc"].startswith("…[cut]")  # the start went; the end, where the error is, stayed
    assert parsed["exc"].endswith("x" * 100)
    assert "field0" not in parsed


def test_slack_tokens_response_urls_and_link_tokens_never_reach_a_line() -> None:
    link = "https://ackgate.example.com/auth/" + "Ab3_" * 10 + "xyz"
    line = JsonFormatter().format(
        record(
            "token %s url %s link %s",
            "xoxb-1234-5678-abcdef",
            "https://hooks.slack.com/commands/T0/1/secretpart",
            link,
        )
    )
    assert "xoxb-1234" not in line
    assert "secretpart" not in line
    assert "Ab3_Ab3_" not in line
    assert line.count("[redacted]") == 3
