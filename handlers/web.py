"""Server-rendered pages: ``GET``/``POST /auth/{token}``, where the target of an authentication
request verifies or denies it.

The GET never decides anything (chat unfurlers and mail scanners fetch links); the decision is a
POST carrying a CSRF token that is an HMAC over the link's token and a per-render nonce, so it is
bound to that link and forged by no other site. Every value is HTML-escaped, the page loads nothing
from elsewhere, and the headers forbid framing, caching and referrers (the token is in the URL).
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
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import SecretStr

from bot import messages
from bot.auth import AuthPage, AuthService, PageState
from bot.domain import AuthStatus

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


def render(page: AuthPage, *, csrf: str = "") -> web.Response:
    """The page for ``page``'s state, with the status code that state calls for."""
    status = _STATUS[page.state]
    if page.state is PageState.ASK:
        form = (
            f'<form method="post" autocomplete="off">'
            f'<input type="hidden" name="{CSRF_FIELD}" value="{_e(csrf)}">'
            f'<div class="actions">'
            f'<button type="submit" class="verify" name="{DECISION_FIELD}" value="verify">{_e(messages.AUTH_PAGE_VERIFY)}</button>'
            f'<button type="submit" class="deny" name="{DECISION_FIELD}" value="deny">{_e(messages.AUTH_PAGE_DENY)}</button>'
            f"</div></form>"
        )
        return page_response(status, f"<p>{_e(messages.AUTH_PAGE_ASK)}</p>{_details(page)}{form}")
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


def mount_auth_pages(
    app: web.Application, *, service: AuthService, csrf_secret: SecretStr, public_url: str | None = None
) -> None:
    """Add ``GET`` and ``POST /auth/{token}`` to ``app`` (before it starts).

    ``public_url`` (``ACKGATE_PUBLIC_URL``) is the origin a decision may come from; without it, the
    request's own scheme and host. ``csrf_secret`` should be ``ACKGATE_SECRET_KEY`` or another
    long-lived secret: rotating it only invalidates pages open at that moment.
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

    async def show(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            page = await service.page(token)
            return render(page, csrf=tokens.mint(token) if page.state is PageState.ASK else "")
        except Exception:
            log.exception("the authentication page failed")  # the token is left out on purpose
            return _notice(500, messages.AUTH_PAGE_ERROR)

    async def decide(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            if request.content_length is not None and request.content_length > _MAX_FORM_BYTES:
                return _notice(400, messages.AUTH_PAGE_BAD_REQUEST)
            form = await request.post()
            csrf = form.get(CSRF_FIELD)
            if not same_origin(request) or not isinstance(csrf, str) or not tokens.valid(token, csrf):
                log.warning("authentication decision refused: missing or wrong CSRF token or origin")
                return _notice(403, messages.AUTH_PAGE_FORBIDDEN, tone="bad")
            decision = form.get(DECISION_FIELD)
            if decision not in ("verify", "deny"):
                return _notice(400, messages.AUTH_PAGE_BAD_DECISION)
            return render(await service.decide(token, verify=decision == "verify"))
        except web.HTTPException:
            return _notice(400, messages.AUTH_PAGE_BAD_REQUEST)
        except Exception:
            log.exception("the authentication decision failed")
            return _notice(500, messages.AUTH_PAGE_ERROR)

    app.router.add_get("/auth/{token}", show)
    app.router.add_post("/auth/{token}", decide)
