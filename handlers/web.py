"""Server-rendered pages: ``GET``/``POST /auth/{token}``, where the target of an authentication
request verifies or denies it.

The GET never decides anything (chat unfurlers and mail scanners fetch links); the decision is a
POST carrying a CSRF token that is an HMAC over the link's token and a per-render nonce, so it is
bound to that link and forged by no other site. Every value is HTML-escaped, the page loads nothing
from elsewhere, and the headers forbid framing, caching and referrers (the token is in the URL).

Who may decide: without a sign-in provider, whoever holds the link (the page says so). With one
(``ACKGATE_OIDC_ISSUER``, see ``handlers/auth_signin.py``), only a visitor signed in there as the
request's target, with that email verified by the provider: anyone else is told who they are
signed in as and whom the request is for, and nothing changes.

A POST is read by this module, not by aiohttp's multipart machinery: only
``application/x-www-form-urlencoded`` (what the page's form sends), at most 4 KiB, each field once.
Anything else is a 4xx page at once.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import secrets
from functools import cache
from importlib.resources import files
from string import Template
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from pydantic import SecretStr

from bot.core import messages
from bot.core.auth import AuthPage, AuthService, PageState
from bot.core.domain import AuthStatus
from handlers.auth_session import SIGNIN_COOKIE, SignedIn
from handlers.auth_signin import CALLBACK_PATH, SignIn
from handlers.guard import report
from handlers.oidc import ProviderUnavailable

log = logging.getLogger("ackgate.web")

CSRF_FIELD = "csrf"
DECISION_FIELD = "decision"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
_STATUS = {
    PageState.ASK: 200,
    PageState.DONE: 200,
    PageState.INVALID: 404,
    PageState.EXPIRED: 410,
    PageState.USED: 410,
}
_MAX_FORM_BYTES = 4096  # two short fields; anything larger is not our form
_FORM_TYPE = "application/x-www-form-urlencoded"
_FIELDS = (CSRF_FIELD, DECISION_FIELD)
VERIFY, DENY, SIGN_IN, SWITCH = "verify", "deny", "signin", "switch"


@cache
def _layout() -> Template:
    return Template(files("handlers").joinpath("templates/auth_page.html").read_text(encoding="utf-8"))


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def page_response(status: int, body: str, *, title: str = messages.AUTH_PAGE_TITLE) -> web.Response:
    """A full HTML page around ``body`` (already escaped) with the strict headers."""
    text = _layout().substitute(title=_e(title), body=body)
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)


def _notice(status: int, text: str, *, tone: str = "") -> web.Response:
    return page_response(status, f'<p class="status {tone}" role="status">{_e(text)}</p>')


def _details(page: AuthPage) -> str:
    rows = [
        (messages.AUTH_PAGE_FOR, page.target),
        (messages.AUTH_PAGE_FROM, page.requester),
        (messages.AUTH_PAGE_MESSAGE, page.message),
        (messages.AUTH_PAGE_CONTEXT, page.context),
    ]
    if page.state is PageState.ASK and page.expires_at is not None:
        rows.append((messages.AUTH_PAGE_EXPIRES, messages.when(page.expires_at)))
    items = "".join(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>" for label, value in rows if value)
    return f"<dl>{items}</dl>"


def _form(csrf: str, *buttons: tuple[str, str, str]) -> str:
    rendered = "".join(
        f'<button type="submit" class="{tone}" name="{DECISION_FIELD}" value="{value}">{_e(label)}</button>'
        for value, label, tone in buttons
    )
    return (
        f'<form method="post" autocomplete="off">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{_e(csrf)}">'
        f'<div class="actions">{rendered}</div></form>'
    )


_DECIDE = ((VERIFY, messages.AUTH_PAGE_VERIFY, "verify"), (DENY, messages.AUTH_PAGE_DENY, "deny"))


def render(page: AuthPage, *, csrf: str = "", signin: bool = False, who: SignedIn | None = None) -> web.Response:
    """The page for ``page``'s state, with the status code that state calls for.

    ``signin`` says a provider is configured; ``who`` is whoever signed in in this browser for this
    link. A pending request then shows its Verify and Deny only to its verified target.
    """
    status = _STATUS[page.state]
    if page.state is PageState.ASK:
        if not signin:
            note = f'<p class="note">{_e(messages.AUTH_PAGE_POSSESSION)}</p>'
            return page_response(
                status, f"<p>{_e(messages.AUTH_PAGE_ASK)}</p>{note}{_details(page)}{_form(csrf, *_DECIDE)}"
            )
        if who is None:
            rows = f"<dl><dt>{_e(messages.AUTH_PAGE_FOR)}</dt><dd>{_e(page.target)}</dd></dl>"
            form = _form(csrf, (SIGN_IN, messages.AUTH_PAGE_SIGN_IN, "verify"))
            return page_response(status, f"<p>{_e(messages.auth_page_sign_in_ask(page.target))}</p>{rows}{form}")
        refusal = refused(page, who)
        if refusal:
            form = _form(csrf, (SWITCH, messages.AUTH_PAGE_SIGN_IN_AGAIN, "deny"))
            return page_response(403, f'<p class="status bad" role="status">{_e(refusal)}</p>{form}')
        signed_in = f'<p class="note">{_e(messages.auth_page_signed_in_as(who.email))}</p>'
        return page_response(
            status, f"{signed_in}<p>{_e(messages.AUTH_PAGE_ASK)}</p>{_details(page)}{_form(csrf, *_DECIDE)}"
        )
    if page.state is PageState.DONE:
        verified = page.status is AuthStatus.VERIFIED
        text = messages.AUTH_PAGE_VERIFIED if verified else messages.AUTH_PAGE_DENIED
        tone = "good" if verified else "bad"
        return page_response(status, f'<p class="status {tone}" role="status">{_e(text)}</p>{_details(page)}')
    text = {
        PageState.INVALID: messages.AUTH_PAGE_INVALID,
        PageState.EXPIRED: messages.AUTH_PAGE_EXPIRED,
        PageState.USED: messages.AUTH_PAGE_USED,
    }[page.state]
    return _notice(status, text)


def refused(page: AuthPage, who: SignedIn) -> str:
    """Why ``who`` may not answer ``page`` (empty when they may): only its target, with a verified email."""
    if who.email.strip().casefold() != page.target.strip().casefold():
        return messages.auth_page_wrong_user(who.email, page.target)
    if not who.email_verified:
        return messages.auth_page_unverified(who.email)
    return ""


class CsrfTokens:
    """Stateless CSRF tokens: ``<nonce>.<hmac(secret, link token, nonce)>``."""

    def __init__(self, secret: SecretStr) -> None:
        # a key of its own, so a token minted here is worth nothing anywhere else the secret is used
        self._key = hmac.new(secret.get_secret_value().encode(), b"ackgate auth-page csrf v1", hashlib.sha256).digest()

    def _mac(self, link_token: str, nonce: str) -> str:
        return hmac.new(self._key, f"/auth/{link_token}\x00{nonce}".encode(), hashlib.sha256).hexdigest()

    def mint(self, link_token: str) -> str:
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._mac(link_token, nonce)}"

    def valid(self, link_token: str, value: str) -> bool:
        nonce, _, mac = value.partition(".")
        if not nonce or not mac:
            return False
        return hmac.compare_digest(mac.encode(), self._mac(link_token, nonce).encode())


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class FormRefused(Exception):
    """The POST is not this page's form; ``status`` and ``text`` are the page to answer with."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


async def read_form(request: web.Request) -> dict[str, str]:
    """The page's two fields, each at most once; :class:`FormRefused` for anything that is not that form."""
    if request.content_type != _FORM_TYPE:
        raise FormRefused(415, messages.AUTH_PAGE_BAD_REQUEST)
    if request.content_length is not None and request.content_length > _MAX_FORM_BYTES:
        raise FormRefused(413, messages.AUTH_PAGE_BAD_REQUEST)
    body = bytearray()
    while chunk := await request.content.read(_MAX_FORM_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise FormRefused(413, messages.AUTH_PAGE_BAD_REQUEST)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=len(_FIELDS) + 2)
    except ValueError as exc:  # not UTF-8 (UnicodeDecodeError), or too many fields
        raise FormRefused(400, messages.AUTH_PAGE_BAD_REQUEST) from exc
    if any(len(values) != 1 for values in fields.values()):
        raise FormRefused(400, messages.AUTH_PAGE_BAD_REQUEST)
    return {name: values[0] for name, values in fields.items()}


def mount_auth_pages(
    app: web.Application,
    *,
    service: AuthService,
    csrf_secret: SecretStr,
    public_url: str | None = None,
    signin: SignIn | None = None,
) -> None:
    """Add ``GET`` and ``POST /auth/{token}`` (and, with ``signin``, ``GET /auth/callback``) to ``app``.

    ``public_url`` (``ACKGATE_PUBLIC_URL``) is the origin a decision may come from; without it, the
    request's own scheme and host. ``csrf_secret`` should be ``ACKGATE_SECRET_KEY`` or another
    long-lived secret: rotating it only invalidates pages open at that moment. Without ``signin``,
    holding the link is the proof of identity; with it, only the signed-in, verified target decides.
    """
    tokens = CsrfTokens(csrf_secret)

    def same_origin(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        # Absent from older browsers, and "null" for a form on a no-referrer page: the CSRF token
        # carries the check then. A real origin must be ours.
        if origin is None or origin == "null":
            return True
        expected = _origin(public_url) if public_url else f"{request.scheme}://{request.host}".lower()
        return origin.lower() == expected

    def who(request: web.Request, token: str) -> SignedIn | None:
        return signin.cookies.identity(request, token) if signin is not None else None

    def shown(request: web.Request, token: str, page: AuthPage) -> web.Response:
        csrf = tokens.mint(token) if page.state is PageState.ASK else ""
        return render(page, csrf=csrf, signin=signin is not None, who=who(request, token))

    async def show(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            return shown(request, token, await service.page(token))
        except Exception as exc:
            report(exc, request)  # one line, naming the route's pattern: the token is left out
            return _notice(500, messages.AUTH_PAGE_ERROR)

    async def start_signin(token: str, page: AuthPage, *, prompt: str) -> web.Response:
        assert signin is not None
        try:
            return await signin.begin(token, login_hint=page.target, prompt=prompt)
        except ProviderUnavailable as exc:
            log.warning("sign-in provider unavailable: %s", exc)
            return _notice(503, messages.AUTH_PAGE_PROVIDER_DOWN, tone="bad")

    async def decide(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            form = await read_form(request)
        except FormRefused as refusal:
            log.info("authentication form refused: HTTP %s", refusal.status)
            return _notice(refusal.status, refusal.text)
        try:
            csrf = form.get(CSRF_FIELD)
            if not same_origin(request) or csrf is None or not tokens.valid(token, csrf):
                log.info("authentication decision refused: missing or wrong CSRF token or origin")
                return _notice(403, messages.AUTH_PAGE_FORBIDDEN, tone="bad")
            decision = form.get(DECISION_FIELD)
            allowed = (VERIFY, DENY, SIGN_IN, SWITCH) if signin is not None else (VERIFY, DENY)
            if decision not in allowed:
                return _notice(400, messages.AUTH_PAGE_BAD_DECISION)
            if signin is None:
                return render(await service.decide(token, verify=decision == VERIFY))
            page = await service.page(token)
            if page.state is not PageState.ASK:
                return render(page)
            if decision in (SIGN_IN, SWITCH):
                return await start_signin(token, page, prompt="login" if decision == SWITCH else "")
            visitor = who(request, token)
            if visitor is None:
                log.info("authentication decision refused: nobody signed in for this link")
                return _notice(403, messages.AUTH_PAGE_SIGN_IN_FIRST, tone="bad")
            if refused(page, visitor):
                log.info("authentication decision refused: signed in as someone other than the target")
                return shown(request, token, page)  # the page that says who they are and whom it is for
            return render(await service.decide(token, verify=decision == VERIFY))
        except Exception as exc:
            report(exc, request)
            return _notice(500, messages.AUTH_PAGE_ERROR)

    async def callback(request: web.Request) -> web.Response:
        assert signin is not None
        try:
            finished = await signin.finish(request)
        except Exception as exc:
            report(exc, request)
            finished = None
        if finished is None or finished.who is None:
            status, text = (finished.status, finished.problem) if finished else (500, messages.AUTH_PAGE_ERROR)
            response = _notice(status, text, tone="bad")
            signin.cookies.forget(response, SIGNIN_COOKIE)
            return response
        response = web.Response(status=303, headers={"Location": f"/auth/{finished.link_token}", **SECURITY_HEADERS})
        signin.cookies.forget(response, SIGNIN_COOKIE)
        signin.cookies.set_identity(response, finished.link_token, finished.who)
        return response

    async def nothing_here(request: web.Request) -> web.Response:
        return _notice(404, messages.AUTH_PAGE_INVALID)

    if signin is not None:
        app.router.add_get(CALLBACK_PATH, callback)  # before /auth/{token}, which would match it too
    app.router.add_get("/auth/{token}", show)
    app.router.add_post("/auth/{token}", decide)
    # Any other path under /auth (a truncated or mangled link) gets the same clear page.
    for path in ("/auth", "/auth/", "/auth/{token}/{rest:.*}"):
        app.router.add_route("GET", path, nothing_here)
        app.router.add_route("POST", path, nothing_here)
