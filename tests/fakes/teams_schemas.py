"""Validators for Teams traffic, built from the official documents in ``tests/reference/teams/``.

* :func:`check_connector_body`: a Bot Connector request body against ``ConnectorAPI.swagger.json``
  (its ``definitions`` used as a draft-04 JSON Schema), by the swagger's operation id; an adaptive card
  attachment inside it is checked against the AC 1.5 schema too. Plug it into
  ``TeamsSimulator(validator=check_connector_body)``.
* :func:`check_card`: an Adaptive Card against ``adaptive-card.schema.1.5.0.json`` (draft-06, strict).
* :func:`check_manifest`: a Teams app manifest against ``MicrosoftTeams.schema.v1.19.json`` (draft-04).

A missing document raises: conformance must fail loudly, never skip.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, Draft6Validator

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "teams"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"

# The swagger's operation id -> the definition its body must match.
BODY_DEFINITIONS = {
    "Conversations_CreateConversation": "ConversationParameters",
    "Conversations_SendToConversation": "Activity",
    "Conversations_ReplyToActivity": "Activity",
    "Conversations_UpdateActivity": "Activity",
}


class SchemaError(AssertionError):
    """A body does not match the official document."""


def load(name: str) -> Any:
    path = REFERENCE / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; restore tests/reference/teams/ rather than skipping these tests.")
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def _swagger() -> dict[str, Any]:
    document: dict[str, Any] = load("ConnectorAPI.swagger.json")
    return document


@functools.cache
def _definition_validator(name: str) -> Draft4Validator:
    schema = {"$ref": f"#/definitions/{name}", "definitions": _swagger()["definitions"]}
    return Draft4Validator(schema)


@functools.cache
def _card_validator() -> Draft6Validator:
    schema = load("adaptive-card.schema.1.5.0.json")
    Draft6Validator.check_schema(schema)
    return Draft6Validator(schema)


@functools.cache
def _manifest_validator() -> Draft4Validator:
    schema = load("MicrosoftTeams.schema.v1.19.json")
    Draft4Validator.check_schema(schema)
    return Draft4Validator(schema)


def _problems(validator: Draft4Validator | Draft6Validator, document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)]


def check_definition(name: str, body: Any) -> None:
    """Raise :class:`SchemaError` unless ``body`` matches the swagger definition ``name``."""
    problems = _problems(_definition_validator(name), body)
    if problems:
        raise SchemaError(f"{name}: " + "; ".join(problems))


def check_card(card: Any) -> None:
    """Raise :class:`SchemaError` unless ``card`` is a valid Adaptive Card 1.5."""
    problems = _problems(_card_validator(), card)
    if problems:
        raise SchemaError("Adaptive Card 1.5: " + "; ".join(problems))


def check_manifest(manifest: Any) -> None:
    problems = _problems(_manifest_validator(), manifest)
    if problems:
        raise SchemaError("Teams manifest v1.19: " + "; ".join(problems))


def check_connector_body(operation: str, body: dict[str, Any]) -> None:
    """The simulator's validator: the body of a Bot Connector call, by operation id."""
    definition = BODY_DEFINITIONS.get(operation)
    if definition is None:
        raise SchemaError(f"{operation} takes no body in ConnectorAPI.swagger.json")
    check_definition(definition, body)
    activities = [body] if definition == "Activity" else [body.get("activity") or {}]
    for activity in activities:
        if definition == "Activity" and not activity.get("type"):
            raise SchemaError(f"{operation}: an activity needs a type")
        for attachment in activity.get("attachments") or []:
            if attachment.get("contentType") == CARD_CONTENT_TYPE:
                check_card(attachment.get("content"))
