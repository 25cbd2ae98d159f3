"""Checks a Block Kit message or modal against Slack's limits, read from the reference
``slack/block-kit/block-kit-limits.json`` (not from the renderer's own constants)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from tests.fakes.reference import SLACK

SLACK_REFERENCE = SLACK
LIMITS_FILE = SLACK_REFERENCE / "block-kit/block-kit-limits.json"


@cache
def limits() -> dict[str, int | list[str]]:
    data = json.loads(LIMITS_FILE.read_text())
    return {
        key: entry["value"]
        for section, entries in data.items()
        if section != "_comment"
        for key, entry in entries.items()
    }


def _n(key: str) -> int:
    value = limits()[key]
    assert isinstance(value, int)
    return value


def _text(obj: dict[str, Any] | None) -> str:
    return str((obj or {}).get("text", ""))


def violations(payload: dict[str, Any], *, surface: str = "message") -> list[str]:
    """Every limit ``payload`` (a message body, or a modal view with ``surface="modal"``) breaks."""
    found: list[str] = []

    def over(what: str, actual: int, key: str) -> None:
        if actual > _n(key):
            found.append(f"{what}: {actual} > {key} {_n(key)}")

    blocks = payload.get("blocks", [])
    over("blocks", len(blocks), f"{surface}.blocks.max_items")
    if surface == "modal":
        for part in ("title", "submit", "close"):
            if part in payload:
                over(f"modal {part}", len(_text(payload[part])), f"modal.{part}.max_chars")
        over("callback_id", len(payload.get("callback_id", "")), "modal.callback_id.max_chars")
        over("private_metadata", len(payload.get("private_metadata", "")), "modal.private_metadata.max_chars")
    for i, block in enumerate(blocks):
        where = f"blocks[{i}] {block.get('type')}"
        over(f"{where} block_id", len(block.get("block_id", "")), "any.block_id.max_chars")
        kind = block.get("type")
        if kind == "section":
            over(f"{where} text", len(_text(block.get("text"))), "section.text.max_chars")
            fields = block.get("fields", [])
            over(f"{where} fields", len(fields), "section.fields.max_items")
            for field in fields:
                over(f"{where} field", len(_text(field)), "section.fields[].text.max_chars")
        elif kind == "header":
            over(f"{where} text", len(_text(block.get("text"))), "header.text.max_chars")
        elif kind == "context":
            over(f"{where} elements", len(block.get("elements", [])), "context.elements.max_items")
        elif kind == "actions":
            elements = block.get("elements", [])
            over(f"{where} elements", len(elements), "actions.elements.max_items")
            ids = [e.get("action_id") for e in elements]
            if len(ids) != len(set(ids)):
                found.append(f"{where}: action ids repeat within the block: {ids}")
            for element in elements:
                found.extend(_element(where, element, over))
        elif kind == "input":
            over(f"{where} label", len(_text(block.get("label"))), "input.label.max_chars")
            over(f"{where} hint", len(_text(block.get("hint"))), "input.hint.max_chars")
            found.extend(_element(where, block.get("element", {}), over))
    return found


def _element(where: str, element: dict[str, Any], over: Any) -> list[str]:
    found: list[str] = []
    over(f"{where} action_id", len(element.get("action_id", "")), "any_interactive.action_id.max_chars")
    over(f"{where} placeholder", len(_text(element.get("placeholder"))), "input_element.placeholder.max_chars")
    if element.get("type") == "button":
        over(f"{where} button text", len(_text(element.get("text"))), "button.text.max_chars")
        over(f"{where} button value", len(element.get("value", "")), "button.value.max_chars")
        over(f"{where} button url", len(element.get("url", "")), "button.url.max_chars")
        style = element.get("style")
        allowed = limits()["button.style.allowed"]
        if style is not None and isinstance(allowed, list) and style not in allowed:
            found.append(f"{where}: button style {style!r} not in {allowed}")
    if element.get("type") == "static_select":
        options = element.get("options", [])
        over(f"{where} options", len(options), "static_select.options.max_items")
        for option in options:
            over(f"{where} option text", len(_text(option.get("text"))), "option.text.max_chars")
            over(f"{where} option value", len(option.get("value", "")), "option.value.max_chars")
    return found


def assert_within_limits(payload: dict[str, Any], *, surface: str = "message") -> None:
    problems = violations(payload, surface=surface)
    assert not problems, "\n".join(problems)
