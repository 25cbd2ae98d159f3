"""Hypothesis strategies for hostile input to every entry point: each draws a :class:`Case`, one HTTP
request labelled with the class of input it belongs to (``"block_actions/drop:view.type"``).

Bodies start from the shapes Slack and PagerDuty document (``tests/reference``: Slack's
payloads and payload-shapes, PagerDuty's V3 webhook examples and event types) and from what
Ackgate's own simulators send, then are mutated: keys dropped, added or retyped, strings made huge
or odd, JSON nested deep, numbers made thousands of digits long. Each body is signed validly unless
the case is about the signature itself, so the fuzz reaches the parsers behind the signature checks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import strategies as st

from bot.runtime.simulators import slack_requests
from handlers.slack.blocks import KEY_FORM_CALLBACK_ID
from tests.fakes.reference import SLACK
from tests.pagerduty_webhook_reference import EVENT_TYPES, example_bodies
from tests.reliability.fuzz_support import (
    SIGNING_SECRET,
    WEBHOOK_SECRET,
    pagerduty_signature,
    slack_headers,
    webhook_headers,
)

SLACK_REFERENCE = SLACK
Json = Any


@dataclass(frozen=True)
class Case:
    """One request: its input class (for the figures), and what goes on the wire."""

    label: str
    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints the falsifying example; keep it readable
        shown = self.body[:300] + (b"..." if len(self.body) > 300 else b"")
        return f"Case({self.label!r}, {self.method} {self.path[:120]}, {len(self.body)} bytes: {shown!r}, {dict(self.headers)!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# --- the people and ids the fuzz talks about ------------------------------------------------

USER_IDS = ("U0ALICE", "U0BOB", "U0CAROL", "U0ERIN", "U0NOBODY", "", "W0ALICE")


def response_urls(root: str) -> st.SearchStrategy[str]:
    # Only loopback or nonsense: nothing the fuzz sends may make Ackgate reach the internet.
    return st.sampled_from(
        (
            f"{root}/response/fuzz",
            "",
            "not a url",
            "http://127.0.0.1:9/refused",
            "ftp://127.0.0.1/x",
            "http://[::1",
            "javascript:alert(1)",
        )
    )


# --- values ---------------------------------------------------------------------------------

# No lone surrogates: they cannot be encoded into a body at all, so no client could send them.
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60)
odd_strings = st.sampled_from(
    (
        "",
        " ",
        "\x00",
        "\u202e\u0644\u0627",
        "👩🏽‍💻" * 5,
        "<@U0BOB|bob>",
        "<mailto:bob@example.com|bob@example.com>",
        "%s%s%n",
        "{{7*7}}",
        "'; DROP TABLE grants; --",
        "r-00000000",
        "g-00000000",
        "ackgate.approve",
        "\\u0000",
        "1e999",
    )
)
HUGE = (3_001, 40_001, 300_000)
huge_strings = st.builds(lambda n, c: c * n, st.sampled_from(HUGE), st.sampled_from(("x", "é", "🙂", "<")))
leaf: st.SearchStrategy[Json] = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text | odd_strings
)
json_values: st.SearchStrategy[Json] = st.recursive(
    leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=10,
)

# Sentinels replaced in the serialised text, for what ``json.dumps`` cannot build from Python values.
_DEEP = "\u0001deep:{}\u0001"
_DIGITS = "\u0001digits:{}\u0001"
_RAW = "\u0001raw:{}\u0001"
special_values = (
    st.sampled_from((100, 1_000, 100_000)).map(lambda n: _DEEP.format(n))
    | st.sampled_from((400, 5_000, 50_000)).map(lambda n: _DIGITS.format(n))
    | st.sampled_from(("NaN", "Infinity", "-Infinity", "1e999999", "-0", "0x1F", "tru")).map(_RAW.format)
)
hostile_values = json_values | huge_strings | special_values


def dumps(value: Json) -> str:
    """JSON text for ``value``, with the sentinels expanded into deep nesting, long numbers and raw tokens."""
    out = json.dumps(value, ensure_ascii=False)
    while "\u0001" in out:
        start = out.index('"\u0001')
        end = out.index('\u0001"', start + 2) + 2
        kind, _, arg = out[start + 2 : end - 2].partition(":")
        if kind == "deep":
            replacement = "[" * int(arg) + "]" * int(arg)
        elif kind == "digits":
            replacement = "9" * int(arg)
        else:
            replacement = arg
        out = out[:start] + replacement + out[end:]
    return out


# --- mutating documented shapes ---------------------------------------------------------------


def _paths(value: Json, prefix: tuple[Any, ...] = (), limit: int = 200) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Json]] = [(prefix, value)]
    while stack and len(found) < limit:
        path, node = stack.pop(0)
        children: list[tuple[Any, Json]] = []
        if isinstance(node, dict):
            children = list(node.items())
        elif isinstance(node, list):
            children = list(enumerate(node))
        for key, child in children:
            found.append((*path, key))
            stack.append(((*path, key), child))
    return found


def _parent(doc: Json, path: tuple[Any, ...]) -> Json:
    node = doc
    for key in path[:-1]:
        node = node[key]
    return node


def _name(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "<root>"


@st.composite
def mutated(draw: st.DrawFn, base: Json, extra_keys: tuple[str, ...] = ()) -> tuple[Json, list[str]]:
    """``base`` (a deep copy) with one to three mutations; returns it and their labels."""
    doc = json.loads(json.dumps(base))
    labels: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(doc)
        op = draw(st.sampled_from(("drop", "retype", "retype", "add", "huge")))
        if op in ("drop", "retype", "huge") and paths:
            path = draw(st.sampled_from(paths))
            parent = _parent(doc, path)
            if op == "drop":
                if isinstance(parent, dict):
                    del parent[path[-1]]
                else:
                    parent.pop(path[-1])
            else:
                parent[path[-1]] = draw(huge_strings if op == "huge" else hostile_values)
            labels.append(f"{op}:{_name(path)}")
        elif isinstance(doc, dict):
            key = draw(st.sampled_from(extra_keys) | text) if extra_keys else draw(text)
            doc[key] = draw(hostile_values)
            labels.append(f"add:{key if key in extra_keys else '<random>'}")
    return doc, labels


# --- Slack ----------------------------------------------------------------------------------

INTERACTION_TYPES = (
    "block_actions",
    "view_submission",
    "view_closed",
    "shortcut",
    "message_action",
    "workflow_step_edit",
    "workflow_step",
    "block_suggestion",
    "interactive_message",
    "dialog_submission",
    "dialog_cancellation",
    "event_callback",
    "url_verification",
    "",
    "BLOCK_ACTIONS",
)
INTERACTION_KEYS = (
    "type",
    "event",
    "workflow_step",
    "response_urls",
    "view",
    "actions",
    "user",
    "trigger_id",
    "container",
    "message",
    "channel",
    "team",
    "enterprise",
    "callback_id",
    "submission",
    "state",
    "api_app_id",
    "is_enterprise_install",
    "function_data",
    "bot_access_token",
)


def _reference(name: str) -> Json:
    return json.loads((SLACK_REFERENCE / name).read_text(encoding="utf-8"))


def _user(user_id: str) -> Json:
    return {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": slack_requests.TEAM_ID}


def _view_payload(kind: str, callback_id: str, values: Json) -> Json:
    return {
        "type": kind,
        "team": {"id": slack_requests.TEAM_ID, "domain": "ackgate"},
        "user": _user("U0ALICE"),
        "api_app_id": "A0ACKGATE",
        "token": "deprecated-verification-token",
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
        "view": {
            "id": "V0000001",
            "team_id": slack_requests.TEAM_ID,
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": "",
            "blocks": [],
            "state": {"values": values},
            "hash": "156772938.1827394",
            "root_view_id": "V0000001",
            "app_id": "A0ACKGATE",
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def interaction_bases(root: str) -> list[tuple[str, Json]]:
    """Documented interaction payloads, as Slack sends them to an app like Ackgate."""
    url = f"{root}/response/fuzz"
    bases: list[tuple[str, Json]] = []
    for action, value in (("approve", "r-00000000"), ("deny", "r-00000000"), ("revoke", "g-00000000")):
        bases.append(
            (
                "block_actions",
                slack_requests.block_actions_payload(
                    user_id="U0BOB", action_id=f"ackgate.{action}", value=value, response_url=url
                ),
            )
        )
    form = slack_requests.form_state(resource="prod-k8s", duration="1h", reason="fuzz")
    bases.append(("view_submission", _view_payload("view_submission", "ackgate.request", form)))
    key_values = {"key": {"value": {"type": "plain_text_input", "value": "R0UTINGKEY0123456789ABCDEFGHIJKL"}}}
    bases.append(("view_submission", _view_payload("view_submission", KEY_FORM_CALLBACK_ID, key_values)))
    bases.append(("view_closed", {**_view_payload("view_closed", "ackgate.request", form), "is_cleared": False}))
    for kind in ("shortcut", "message_action", "workflow_step_edit", "block_suggestion"):
        bases.append(
            (
                kind,
                {
                    "type": kind,
                    "callback_id": "ackgate.request",
                    "trigger_id": "13345224609.738474920.8088930838d88f008e0",
                    "user": _user("U0ALICE"),
                    "team": {"id": slack_requests.TEAM_ID, "domain": "ackgate"},
                    "api_app_id": "A0ACKGATE",
                    "token": "deprecated-verification-token",
                    "action_id": "ackgate.approve",
                    "value": "",
                },
            )
        )
    bases.append(("block_actions(reference)", _reference("payloads/block_actions.json")))
    bases.append(("view_submission(reference)", _reference("payloads/view_submission.json")))
    bases.append(("block_actions(shapes)", _reference("payload-shapes/BlockActionPayload.json")))
    bases.append(("view_submission(shapes)", _reference("payload-shapes/ViewSubmissionPayload.json")))
    return bases


# The input classes the issue names, always in the mix so a bounded run meets each.
def _named_oddities(root: str) -> list[tuple[str, Json]]:
    url = f"{root}/response/fuzz"
    click = slack_requests.block_actions_payload(
        user_id="U0BOB", action_id="ackgate.approve", value="r-00000000", response_url=url
    )
    form = slack_requests.form_state(resource="prod-k8s", duration="1h", reason="fuzz")
    view = _view_payload("view_submission", "ackgate.request", form)
    two_urls = [{"response_url": url, "channel_id": "C1", "block_id": "b", "action_id": "a"}] * 2
    viewless_type = json.loads(json.dumps(view))
    del viewless_type["view"]["type"]
    return [
        ("block_actions+event", {**click, "event": {"type": "message"}}),
        ("block_actions/user:string", {**click, "user": "U0BOB"}),
        ("block_actions/user:null", {**click, "user": None}),
        ("block_actions/actions:empty", {**click, "actions": []}),
        ("view_submission/view-no-type", viewless_type),
        ("view_submission/response_urls:two", {**view, "response_urls": two_urls}),
        ("view_submission/response_urls:object", {**view, "response_urls": {"a": 1}}),
        ("view_submission/response_urls:string", {**view, "response_urls": "x"}),
        ("workflow_step_edit/no-step", {"type": "workflow_step_edit", "callback_id": "x", "user": _user("U0ALICE")}),
        ("block_actions/deep", {**click, "state": _DEEP.format(100_000)}),
        ("type:missing", {"user": _user("U0ALICE")}),
    ]


def _payload_encodings(payload_text: str) -> st.SearchStrategy[tuple[str, bytes, str]]:
    form = "application/x-www-form-urlencoded"
    return st.sampled_from(
        (
            ("form", urlencode({"payload": payload_text}).encode(), form),
            ("form+extra", (urlencode({"payload": payload_text}) + "&payload=%7B%7D&x=1").encode(), form),
            ("json", payload_text.encode(), "application/json"),
            ("form-raw", b"payload=" + quote(payload_text, safe='{}:,"').encode(), form),
        )
    )


@st.composite
def interactions(draw: st.DrawFn, root: str) -> Case:
    """A signed interaction payload of a documented or odd type, mutated."""
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        label, doc = draw(st.sampled_from(_named_oddities(root)))
        labels = [label]
    else:
        kind, base = draw(st.sampled_from(interaction_bases(root)))
        doc, mutations = draw(mutated(base, INTERACTION_KEYS))
        if isinstance(doc, dict) and draw(st.booleans()):
            doc["type"] = draw(st.sampled_from(INTERACTION_TYPES))
            mutations.append(f"type:{doc['type'] or '<empty>'}")
        if isinstance(doc, dict) and draw(st.integers(min_value=0, max_value=4)) == 0:
            doc["response_urls"] = draw(
                st.sampled_from(([], [{}], [{"a": 1}] * 2, {"a": 1}, "x", None, [draw(response_urls(root))]))
            )
            mutations.append("response_urls:odd")
        if isinstance(doc, dict) and draw(st.integers(min_value=0, max_value=4)) == 0:
            doc["user"] = draw(st.sampled_from(USER_IDS) | hostile_values)
            mutations.append("user:odd")
        labels = [kind, *mutations]
    encoding, body, content_type = draw(_payload_encodings(dumps(doc)))
    return Case(
        "interaction/" + labels[0] + f" [{encoding}] " + " ".join(labels[1:]),
        "POST",
        "/slack/events",
        body,
        {**slack_headers(body), "Content-Type": content_type},
    )


COMMAND_TEXTS = (
    "",
    "help",
    "list",
    "prod-k8s 1h fuzzing",
    "prod-db 30m replication lag",
    "billing-console 2h",
    "revoke g-00000000",
    "extend g-00000000 30m",
    "auth <@U0BOB|bob> resetting your password",
    "auth bob@example.com",
    "auth <@U0NOBODY>",
    "admin status",
    "admin severity critical",
    "admin severity nonsense",
    "admin pagerduty off",
    "admin key",
    "admin test",
    "prefs",
    "prod-k8s 99999999h",
    "prod-k8s -1h",
    "prod-k8s 1h payload errors",
)


@st.composite
def slash_commands(draw: st.DrawFn, root: str) -> Case:
    """A signed ``/access`` slash command with odd text, fields and encodings."""
    fields: dict[str, Any] = dict(
        token="deprecated-verification-token",
        team_id=slack_requests.TEAM_ID,
        team_domain="ackgate",
        channel_id=slack_requests.CHANNEL_ID,
        channel_name="approvals",
        user_id=draw(st.sampled_from(USER_IDS)),
        user_name="fuzz",
        command="/access",
        text=draw(st.sampled_from(COMMAND_TEXTS)),
        response_url=draw(response_urls(root)),
        trigger_id="13345224609.738474920.8088930838d88f008e0",
        api_app_id="A0ACKGATE",
        is_enterprise_install="false",
    )
    labels = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        op = draw(st.sampled_from(("text", "text-huge", "text-words", "drop", "retype", "add", "command")))
        if op == "text":
            fields["text"] = draw(text | odd_strings)
        elif op == "text-huge":
            fields["text"] = draw(huge_strings)
        elif op == "text-words":
            words = draw(st.lists(st.sampled_from(COMMAND_TEXTS) | odd_strings | text, min_size=1, max_size=4))
            fields["text"] = " ".join(words)
        elif op == "drop":
            key = draw(st.sampled_from(sorted(fields)))
            fields.pop(key)
            op = f"drop:{key}"
        elif op == "retype":
            key = draw(st.sampled_from(sorted(fields)))
            fields[key] = dumps(draw(hostile_values))
            op = f"retype:{key}"
        elif op == "add":
            key = draw(st.sampled_from(("payload", "ssl_check", "enterprise_id", "text", "user_id")) | text)
            fields[key] = dumps(draw(hostile_values))
            op = f"add:{key if len(key) < 20 else '<random>'}"
        else:
            fields["command"] = draw(st.sampled_from(("/other", "", "/ACCESS", "/access\x00", "access")))
        labels.append(op)
    body = urlencode(fields).encode()
    encoding = draw(st.sampled_from(("form", "form", "form", "duplicated", "bytes")))
    if encoding == "duplicated":
        body += b"&text=" + quote(draw(text)).encode() + b"&user_id=U0ERIN"
    elif encoding == "bytes":
        body = draw(st.binary(max_size=200))
    return Case(f"slash/{encoding} " + " ".join(labels), "POST", "/slack/events", body, slack_headers(body))


def _latin1(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0xFF), min_size=min_size, max_size=max_size)


header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
)
TIMESTAMPS = ("12abc", "", " ", "-1", "0", "1e9", "١٢٣٤٥٦٧٨٩٠", "9" * 40, "1.5", "0x10", "+1700000000", "\u00a0")


@st.composite
def slack_signature_headers(draw: st.DrawFn, root: str) -> Case:
    """A real ``/access help`` body with its signature headers mangled (mostly unsigned)."""
    body, _ = (
        slack_requests.slash_command_body(
            text="help", user_id="U0ALICE", response_url=f"{root}/response/fuzz-signature"
        ),
        None,
    )
    raw = body.encode()
    now = int(time.time())
    headers = slack_headers(raw)
    kind = draw(
        st.sampled_from(
            (
                "sig-nonascii",
                "sig-text",
                "sig-empty",
                "ts-odd",
                "ts-odd-signed",
                "ts-stale",
                "ts-future",
                "missing",
                "wrong-secret",
            )
        )
    )
    if kind == "sig-nonascii":
        headers["X-Slack-Signature"] = "v0=" + draw(_latin1(1, 64))
    elif kind == "sig-text":
        headers["X-Slack-Signature"] = draw(header_text)
    elif kind == "sig-empty":
        headers["X-Slack-Signature"] = draw(st.sampled_from(("", "v0=", "v0", "v1=" + "0" * 64)))
    elif kind == "ts-odd":
        headers["X-Slack-Request-Timestamp"] = draw(st.sampled_from(TIMESTAMPS) | header_text)
    elif kind == "ts-odd-signed":
        # Signed correctly over the odd timestamp: only the timestamp check can refuse it.
        stamp = draw(st.sampled_from(TIMESTAMPS))
        headers = slack_headers(raw, timestamp=stamp)
    elif kind == "ts-stale":
        headers = slack_headers(raw, timestamp=now - draw(st.integers(min_value=301, max_value=10**9)))
    elif kind == "ts-future":
        headers = slack_headers(raw, timestamp=now + draw(st.integers(min_value=301, max_value=10**12)))
    elif kind == "missing":
        headers.pop(draw(st.sampled_from(("X-Slack-Signature", "X-Slack-Request-Timestamp"))))
    else:
        headers = slack_headers(raw, secret=draw(text) or "x")
        if headers["X-Slack-Signature"] == slack_headers(raw, secret=SIGNING_SECRET)["X-Slack-Signature"]:
            headers["X-Slack-Signature"] = "v0=" + "0" * 64
    return Case(f"slack-signature/{kind}", "POST", "/slack/events", raw, headers)


def slack_inputs(root: str) -> st.SearchStrategy[Case]:
    return st.one_of(interactions(root), slash_commands(root), slack_signature_headers(root))


# --- PagerDuty webhooks -----------------------------------------------------------------------

_BODIES = example_bodies()
WEBHOOK_BASES = [(name, json.loads(raw)) for name, raw in _BODIES.items()]
KNOWN_EVENT_TYPES = tuple(sorted({str(e.get("event_type") or e.get("type") or e) for e in EVENT_TYPES["event_types"]}))[
    :40
]
WEBHOOK_KEYS = ("event", "id", "event_type", "resource_type", "occurred_at", "agent", "client", "data", "messages")


@st.composite
def webhooks(draw: st.DrawFn) -> Case:
    """A validly signed V3 webhook, from PagerDuty's examples, mutated."""
    kind = draw(st.sampled_from(("mutated", "mutated", "mutated", "event-id", "event-type", "raw")))
    name, base = draw(st.sampled_from(WEBHOOK_BASES))
    label = f"webhook/{kind} {name}"
    if kind == "raw":
        body = draw(
            st.binary(max_size=300)
            | st.sampled_from((b"[]", b"null", b"\xef\xbb\xbf{}", b'{"event": null}', b'{"event": []}', b"\xff\xfe"))
            | special_values.map(lambda v: dumps(v).encode())
        )
    else:
        doc = json.loads(json.dumps(base))
        event = doc.get("event") if isinstance(doc, dict) else None
        if kind == "event-id" and isinstance(event, dict):
            event["id"] = draw(special_values | st.integers() | st.sampled_from(("", None, [], {})) | huge_strings)
        elif kind == "event-type" and isinstance(event, dict):
            event["event_type"] = draw(st.sampled_from(KNOWN_EVENT_TYPES) | text | hostile_values)
            event["id"] = draw(st.uuids()).hex
        else:
            doc, mutations = draw(mutated(doc, WEBHOOK_KEYS))
            label += " " + " ".join(mutations)
            if isinstance(doc, dict) and isinstance(doc.get("event"), dict):
                doc["event"]["id"] = draw(st.uuids()).hex  # fresh, so it is not just a duplicate
        body = dumps(doc).encode()
    headers = webhook_headers(body, webhook_id=draw(st.uuids()).hex if draw(st.booleans()) else draw(header_text))
    return Case(label, "POST", "/webhooks/pagerduty", body, headers)


@st.composite
def webhook_signature_headers(draw: st.DrawFn) -> Case:
    """A real webhook body with its signature header mangled."""
    raw = draw(st.sampled_from(sorted(_BODIES.values())))
    headers = webhook_headers(raw)
    kind = draw(st.sampled_from(("nonascii", "text", "many", "wrong-secret", "missing", "valid+junk")))
    if kind == "nonascii":
        headers["X-PagerDuty-Signature"] = "v1=" + draw(_latin1(1, 64))
    elif kind == "text":
        headers["X-PagerDuty-Signature"] = draw(header_text)
    elif kind == "many":
        headers["X-PagerDuty-Signature"] = ",".join(draw(st.lists(header_text, min_size=2, max_size=30)))
    elif kind == "wrong-secret":
        headers["X-PagerDuty-Signature"] = pagerduty_signature(raw, secret=(draw(text) or "x") + "!")
    elif kind == "missing":
        del headers["X-PagerDuty-Signature"]
    else:
        # Glued on, not a comma-separated second signature (a list holding the valid one is valid).
        headers["X-PagerDuty-Signature"] = pagerduty_signature(raw, secret=WEBHOOK_SECRET) + draw(_glued)
    return Case(f"webhook-signature/{kind}", "POST", "/webhooks/pagerduty", raw, headers)


_glued = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters=",\x7f\xa0"),
    min_size=1,
    max_size=20,
)


def webhook_inputs() -> st.SearchStrategy[Case]:
    return st.one_of(webhooks(), webhooks(), webhook_signature_headers())


# --- the authentication pages -----------------------------------------------------------------

FORM_TYPES = (
    None,
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-16",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=XyZ",
    'multipart/form-data; boundary="unterminated',
    "application/json",
    "text/plain",
    "text/html; charset=nonsense",
    "*/*",
)


def _multipart(fields: Mapping[str, str], boundary: str = "XyZ") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


@st.composite
def auth_pages(draw: st.DrawFn, tokens: Callable[[], list[str]], origin: str) -> Case:
    """``GET``/``POST /auth/<token>`` with odd tokens, forms, content types and sizes."""
    known = tokens()
    token_kind = draw(st.sampled_from(("real", "real", "random", "huge", "encoded")))
    if token_kind == "real" and known:
        token = draw(st.sampled_from(known))
    elif token_kind == "huge":
        token = "A" * draw(st.sampled_from((300, 5_000)))
    elif token_kind == "encoded":
        token = quote(draw(text) or "%", safe="")
    else:
        token = quote(draw(st.text(min_size=1, max_size=40)), safe="")
    path = f"/auth/{token}"
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        return Case(f"auth-page/GET {token_kind}", "GET", path, b"", {})
    fields = {
        "csrf": draw(st.sampled_from(("", "a.b", "x" * 64, "nonce." + "0" * 64)) | text),
        "decision": draw(st.sampled_from(("verify", "deny", "", "VERIFY", "verify\x00")) | text),
    }
    body_kind = draw(st.sampled_from(("urlencoded", "multipart-good", "multipart-broken", "bytes", "huge", "empty")))
    if body_kind == "urlencoded":
        body = urlencode(fields).encode()
    elif body_kind == "multipart-good":
        body = _multipart(fields)
    elif body_kind == "multipart-broken":
        body = draw(
            st.sampled_from(
                (
                    b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--XyZ--\r\n",
                    b"--XyZ\r\n\r\n\r\n",
                    b'--XyZ\r\nContent-Disposition: form-data; name="csrf"\r\n',
                    b'--XyZ\r\nContent-Type: text/plain; charset=x-unknown\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n\xff\xfe\r\n--XyZ--\r\n',
                    b"--other\r\n\r\n--other--",
                    b"garbage without boundary",
                )
            )
        )
    elif body_kind == "bytes":
        body = draw(st.binary(max_size=500))
    elif body_kind == "huge":
        body = b"csrf=" + b"A" * draw(st.sampled_from((5_000, 200_000, 2_000_000)))
    else:
        body = b""
    content_type = draw(st.sampled_from(FORM_TYPES))
    headers = {"Origin": draw(st.sampled_from((origin, "null", "http://evil.example", origin.upper())))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return Case(f"auth-page/POST {token_kind} {body_kind} {content_type}", "POST", path, body, headers)
