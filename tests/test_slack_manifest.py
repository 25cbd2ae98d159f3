"""The Slack app manifest validates against Slack's and SchemaStore's schemas and asks for
exactly the scopes the code uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from bot.core import messages
from handlers.slack.notifier import WEB_API_SCOPES, required_bot_scopes
from tests.fakes.block_kit import SLACK_REFERENCE

MANIFEST_FILE = Path(__file__).resolve().parents[1] / "manifests/slack/manifest.yaml"
SCHEMAS = SLACK_REFERENCE / "manifest"
VERSIONED_URL = "https://raw.githubusercontent.com/slackapi/manifest-schema/v0.5.0/schemas/manifest.schema.{}.json"


def _json(name: str) -> Any:
    return json.loads((SCHEMAS / name).read_text())


def slackapi_validator() -> Draft7Validator:
    """Slack's dispatcher schema, with the two versioned schemas it references by remote URL
    served from the local copies (no network)."""
    registry: Registry[Any] = Registry().with_resources(
        (
            VERSIONED_URL.format(v),
            Resource.from_contents(_json(f"manifest.schema.{v}.json"), default_specification=DRAFT7),
        )
        for v in ("1.0.0", "2.0.0")
    )
    return Draft7Validator(_json("slackapi-manifest.schema.json"), registry=registry)


def schemastore_validator() -> Draft7Validator:
    return Draft7Validator(_json("schemastore-slack-app-manifest.json"))


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded = yaml.safe_load(MANIFEST_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _errors(validator: Draft7Validator, document: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_manifest_validates_against_slacks_official_schema(manifest: dict[str, Any]) -> None:
    assert _errors(slackapi_validator(), manifest) == []


def test_manifest_validates_against_the_schemastore_schema(manifest: dict[str, Any]) -> None:
    assert _errors(schemastore_validator(), manifest) == []


def test_the_validators_reject_slacks_invalid_example() -> None:
    """Guards the two tests above: a validator that accepts everything would pass them too."""
    assert _errors(slackapi_validator(), _json("example.v1.invalid.json"))
    assert _errors(schemastore_validator(), {"display_information": {"name": "x" * 36}})


def test_manifest_bot_scopes_are_exactly_what_the_code_needs(manifest: dict[str, Any]) -> None:
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == required_bot_scopes()


def test_needed_scopes_cover_the_dm_and_email_lookups() -> None:
    """The scope table itself: the calls that fail without these scopes list them."""
    assert WEB_API_SCOPES["conversations.open"] == {"im:write"}
    assert "users:read.email" in WEB_API_SCOPES["users.info"]
    assert required_bot_scopes() == {
        "commands",
        "chat:write",
        "users:read",
        "users:read.email",
        "im:write",
        "usergroups:read",
    }


def test_manifest_routes_the_command_and_interactivity_to_the_slack_endpoint(manifest: dict[str, Any]) -> None:
    (command,) = manifest["features"]["slash_commands"]
    assert command["command"] == messages.COMMAND
    # Escaped, so a mention arrives as <@U…> (a user id), never as a display name.
    assert command["should_escape"] is True
    assert command["url"] == manifest["settings"]["interactivity"]["request_url"]
    assert command["url"].endswith("/slack/events")
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["socket_mode_enabled"] is False
    assert manifest["display_information"]["name"] == "Ackgate"
    assert manifest["features"]["bot_user"]["display_name"]
