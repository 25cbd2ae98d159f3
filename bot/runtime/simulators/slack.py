"""A Slack Web API simulator: a real aiohttp server on 127.0.0.1, for tests and ``ackgate demo``.

It answers the methods Ackgate calls (auth.test, users.info, users.lookupByEmail,
conversations.open, chat.postMessage, chat.update, chat.postEphemeral, views.open,
views.update) at ``{base_url}{method}`` in the shapes of Slack's Web API (HTTP 200 with
``{"ok": false, "error": code}`` on refusal), and receives ``response_url`` posts at
``/response/<token>``. It checks the bot token (``invalid_auth``), trigger ids (issued by
:meth:`SlackSimulator.trigger_id`, usable once) and view hashes (``hash_conflict``).

State is set with ``add_user``/``add_channel``; every call is kept in ``calls`` (the token is
never recorded), posted messages in ``messages`` (updated in place by chat.update), modals in
``views`` and response_url posts in ``responses``. ``fail_next`` injects one refusal and
``hold`` pauses a method until released. It reads no reference files and imports nothing
from the tests, because the demo runs it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from bot.runtime.simulators.server import LoopbackServer

Json = dict[str, Any]
Handler = Callable[[Json], Json]
_WAIT_LIMIT_SECONDS = 10.0


@dataclass(frozen=True)
class SlackCall:
    """One Web API call as received (token removed)."""

    method: str
    args: Json


@dataclass
class SimUser:
    id: str
    email: str | None
    name: str
    is_bot: bool = False


@dataclass
class SimMessage:
    channel: str
    ts: str
    text: str
    blocks: list[Json]
    edits: int = 0


@dataclass
class SimView:
    id: str
    hash: str
    view: Json
    history: list[Json] = field(default_factory=list)  # earlier versions, oldest first
    previous_hashes: list[str] = field(default_factory=list)


class SlackError(Exception):
    def __init__(self, code: str, *, status: int = 200) -> None:
        super().__init__(code)
        self.code = code
        self.status = status


class SlackSimulator(LoopbackServer):
    """Holds Slack state and serves it over HTTP. ``async with SlackSimulator() as slack: slack.base_url``."""

    label = "Slack simulator"

    def __init__(
        self,
        *,
        token: str = "xoxb-simulated-token",  # noqa: S107 - the simulator's own, not a secret
        team_id: str = "T0ACKGATE",
        bot_user_id: str = "U0ACKGATE",
        bot_id: str = "B0ACKGATE",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.token = token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.calls: list[SlackCall] = []
        self.users: dict[str, SimUser] = {}
        self.channels: set[str] = set()
        self.usergroups: dict[str, set[str]] = {}  # user group id -> member user ids
        self.messages: dict[str, list[SimMessage]] = {}
        self.ephemerals: list[Json] = []
        self.views: dict[str, SimView] = {}
        self.responses: dict[str, list[Json]] = {}
        self._triggers: dict[str, str] = {}  # trigger id -> "fresh" | "used" | "expired"
        self._faults: dict[str, list[SlackError]] = {}
        self._response_faults: list[int] = []  # statuses the next response_url posts answer
        self._holds: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Condition()
        self._seq = 0
        self._methods: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "users.info": self._users_info,
            "users.lookupByEmail": self._users_lookup_by_email,
            "conversations.open": self._conversations_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "usergroups.users.list": self._usergroup_members,
        }

    # --- lifecycle --------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response/{token}", self._response_url)
        return app

    async def stop(self) -> None:
        for gate in self._holds.values():
            gate.set()
        await super().stop()

    @property
    def base_url(self) -> str:
        """The Web API base URL (ending in ``/api/``), which start() returns."""
        return f"{self.root_url}/api/"

    # --- state helpers ----------------------------------------------------------------------

    def _next(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq:07d}"

    def add_user(self, user_id: str, email: str | None, name: str = "", *, is_bot: bool = False) -> str:
        """A workspace member; ``email=None`` is what Slack shows without ``users:read.email``."""
        self.users[user_id] = SimUser(user_id, email, name or user_id.lower(), is_bot)
        return user_id

    def add_channel(self, channel_id: str) -> str:
        self.channels.add(channel_id)
        return channel_id

    def trigger_id(self) -> str:
        """Issue a trigger id, as Slack puts in a slash-command or interaction payload."""
        trigger = f"{self._seq}.{secrets.token_hex(4)}.{secrets.token_hex(8)}"
        self._seq += 1
        self._triggers[trigger] = "fresh"
        return trigger

    def expire_triggers(self) -> None:
        """Every trigger id issued so far is now past its 3 seconds."""
        self._triggers = dict.fromkeys(self._triggers, "expired")

    def response_url(self, token: str) -> str:
        return f"{self._root}/response/{token}"

    def dm_channel(self, user_id: str) -> str:
        """The id of the direct-message conversation with that user (what conversations.open returns)."""
        return "D" + user_id.removeprefix("U").removeprefix("W")

    def fail_next(self, method: str, error: str, *, status: int = 200) -> None:
        """The next call to ``method`` is refused with ``error`` (status 429 for ``ratelimited``)."""
        self._faults.setdefault(method, []).append(SlackError(error, status=status))

    def fail_next_responses(self, status: int, *, times: int = 1) -> None:
        """The next ``times`` response_url posts are answered ``status`` (and not recorded)."""
        self._response_faults.extend([status] * times)

    def hold(self, method: str) -> asyncio.Event:
        """Calls to ``method`` wait until the returned event is set."""
        return self._holds.setdefault(method, asyncio.Event())

    def calls_to(self, method: str) -> list[Json]:
        return [call.args for call in self.calls if call.method == method]

    def methods_called(self) -> list[str]:
        return [call.method for call in self.calls]

    async def wait_for(self, predicate: Callable[[], object]) -> None:
        """Wait until ``predicate()`` is true; it is re-checked after every request served.
        Gives up with ``TimeoutError`` after a generous bound, so a broken test fails, not hangs."""
        async with asyncio.timeout(_WAIT_LIMIT_SECONDS), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- HTTP -------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _arguments(request)
        token = _bearer(request) or str(args.pop("token", ""))
        args.pop("token", None)
        self.calls.append(SlackCall(method, args))
        await self._notify()  # a held call is already visible to wait_for
        try:
            if method in self._holds:
                await self._holds[method].wait()
            if token != self.token:
                raise SlackError("not_authed" if not token else "invalid_auth")
            handler = self._methods.get(method)
            if handler is None:
                raise SlackError("unknown_method", status=404)
            faults = self._faults.get(method)
            if faults:
                raise faults.pop(0)
            body = {"ok": True, **handler(args)}
            status = 200
        except SlackError as exc:
            body, status = {"ok": False, "error": exc.code}, exc.status
        except ValueError:  # a blocks or view argument that is not JSON
            body, status = {"ok": False, "error": "invalid_arguments"}, 200
        headers = {"Retry-After": "1"} if status == 429 else None
        response = web.json_response(body, status=status, headers=headers)
        await self._notify()
        return response

    async def _response_url(self, request: web.Request) -> web.Response:
        if self._response_faults:
            return web.Response(status=self._response_faults.pop(0), text="internal_error")
        try:
            posted = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        self.responses.setdefault(request.match_info["token"], []).append(posted)
        await self._notify()
        return web.Response(text="ok")

    # --- methods ----------------------------------------------------------------------------

    def _auth_test(self, args: Json) -> Json:
        return {
            "url": "https://ackgate-sim.slack.com/",
            "team": "Ackgate simulation",
            "user": "ackgate",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _user_object(self, user: SimUser) -> Json:
        profile: Json = {"real_name": user.name, "display_name": user.name, "team": self.team_id}
        if user.email is not None:
            profile["email"] = user.email
        return {
            "id": user.id,
            "team_id": self.team_id,
            "name": user.name,
            "deleted": False,
            "real_name": user.name,
            "is_bot": user.is_bot,
            "is_app_user": False,
            "profile": profile,
        }

    def _user(self, user_id: str) -> SimUser:
        user = self.users.get(user_id)
        if user is None:
            raise SlackError("user_not_found")
        return user

    def _users_info(self, args: Json) -> Json:
        return {"user": self._user_object(self._user(_required(args, "user")))}

    def _users_lookup_by_email(self, args: Json) -> Json:
        email = _required(args, "email").lower()
        for user in self.users.values():
            if user.email is not None and user.email.lower() == email:
                return {"user": self._user_object(user)}
        raise SlackError("users_not_found")

    def _conversations_open(self, args: Json) -> Json:
        users = [u for u in _required(args, "users").split(",") if u]
        if len(users) != 1:
            raise SlackError("not_implemented")  # group DMs are not simulated
        self._user(users[0])
        channel = self.add_channel(self.dm_channel(users[0]))
        return {"no_op": True, "already_open": True, "channel": {"id": channel}}

    def _channel(self, args: Json) -> str:
        channel = _required(args, "channel")
        if channel in self.users:  # posting to a user id lands in the app's DM with them
            channel = self.add_channel(self.dm_channel(channel))
        if channel not in self.channels:
            raise SlackError("channel_not_found")
        return channel

    def _message_json(self, message: SimMessage) -> Json:
        return {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "text": message.text,
            "blocks": message.blocks,
            "ts": message.ts,
        }

    def _chat_post_message(self, args: Json) -> Json:
        channel = self._channel(args)
        text, blocks = str(args.get("text") or ""), _json_list(args.get("blocks"))
        if not text and not blocks:
            raise SlackError("no_text")
        message = SimMessage(channel, self._ts(), text, blocks)
        self.messages.setdefault(channel, []).append(message)
        return {"channel": channel, "ts": message.ts, "message": self._message_json(message)}

    def _chat_update(self, args: Json) -> Json:
        channel = _required(args, "channel")
        if channel not in self.channels:
            raise SlackError("channel_not_found")
        ts = _required(args, "ts")
        message = next((m for m in self.messages.get(channel, []) if m.ts == ts), None)
        if message is None:
            raise SlackError("message_not_found")
        if "blocks" in args:
            message.blocks = _json_list(args["blocks"])
        elif "text" in args:
            message.blocks = []  # text without blocks removes the blocks, as Slack does
        if "text" in args:
            message.text = str(args["text"])
        message.edits += 1
        return {"channel": channel, "ts": ts, "text": message.text, "message": self._message_json(message)}

    def _chat_post_ephemeral(self, args: Json) -> Json:
        channel = self._channel(args)
        self._user(_required(args, "user"))
        ts = self._ts()
        self.ephemerals.append({**args, "channel": channel, "ts": ts})
        return {"message_ts": ts}

    def _view_json(self, view: SimView) -> Json:
        return {
            **view.view,
            "id": view.id,
            "team_id": self.team_id,
            "hash": view.hash,
            "state": {"values": {}},
            "root_view_id": view.id,
            "bot_id": self.bot_id,
        }

    def _views_open(self, args: Json) -> Json:
        trigger = _required(args, "trigger_id")
        state = self._triggers.get(trigger)
        if state is None:
            raise SlackError("invalid_trigger_id")
        if state != "fresh":
            raise SlackError("expired_trigger_id" if state == "expired" else "exchanged_trigger_id")
        self._triggers[trigger] = "used"
        view = SimView(self._next("V"), self._hash(), _json_object(args.get("view")))
        self.views[view.id] = view
        return {"view": self._view_json(view)}

    def _usergroup_members(self, args: Json) -> Json:
        group = _required(args, "usergroup")
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": sorted(self.usergroups[group])}

    def _views_update(self, args: Json) -> Json:
        view = self.views.get(_required(args, "view_id"))
        if view is None:
            raise SlackError("not_found")
        if args.get("hash") and args["hash"] != view.hash:
            raise SlackError("hash_conflict")
        view.history.append(view.view)
        view.previous_hashes.append(view.hash)
        view.view, view.hash = _json_object(args.get("view")), self._hash()
        return {"view": self._view_json(view)}

    def _ts(self) -> str:
        self._seq += 1
        return f"1700000000.{self._seq:06d}"

    def _hash(self) -> str:
        self._seq += 1
        return f"{self._seq}.{secrets.token_hex(4)}"


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""


async def _arguments(request: web.Request) -> Json:
    """Arguments from the query string and a form or JSON body, as the Web API accepts them."""
    args: Json = dict(request.query)
    raw = await request.text()
    if not raw:
        return args
    if request.content_type == "application/json":
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise web.HTTPBadRequest(text="invalid_json") from exc
        if isinstance(parsed, dict):
            args.update(parsed)
    else:
        args.update(parse_qsl(raw, keep_blank_values=True))
    return args


def _required(args: Json, name: str) -> str:
    value = args.get(name)
    if not value:
        raise SlackError("invalid_arguments")
    return str(value)


def _json_list(value: object) -> list[Json]:
    # Form-encoded calls carry blocks as a JSON string; JSON calls carry the list itself.
    parsed = json.loads(value) if isinstance(value, str) else value
    if parsed is None:
        return []
    if not isinstance(parsed, list):
        raise SlackError("invalid_blocks")
    return parsed


def _json_object(value: object) -> Json:
    parsed = json.loads(value) if isinstance(value, str) else value
    if not isinstance(parsed, dict):
        raise SlackError("invalid_arguments")
    return parsed
