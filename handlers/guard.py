"""The last resort for every entry point: an aiohttp middleware that no exception gets past.

- A handler's own ``web.HTTPException`` passes through (a redirect, a 4xx with its own sentence).
  aiohttp's stock answers (the router's 404 and 405, the 413 for a body over ``client_max_size``)
  are replaced by one plain sentence, so no answer echoes the request or names a library.
- A parsing error the client caused (``ValueError``, which covers ``UnicodeDecodeError`` and
  ``json.JSONDecodeError``, a ``RecursionError`` from something nested too deep, or aiohttp's
  ``HttpProcessingError`` for a body that breaks its framing) is a 400,
  logged at INFO.
- Anything else is a 500, "something went wrong, it was logged", logged as one ERROR line naming
  the exception type and the route pattern (never the path: it may hold a link token, and never the
  body). The traceback goes to DEBUG only.

What aiohttp refuses before any handler runs (a request line or a chunked body it can't parse) is
answered by aiohttp itself with a 400; :func:`install` also turns its log of that, an ERROR with a
traceback, into one INFO line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot.core import messages

log = logging.getLogger("ackgate.guard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CAP = 80  # characters of a name taken into a log line
_PLAIN_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_KEPT_HEADERS = ("Allow",)  # a 405 says which methods would do
_SENTENCES = {
    400: messages.GUARD_BAD_REQUEST,
    404: messages.GUARD_NOT_FOUND,
    405: messages.GUARD_METHOD_NOT_ALLOWED,
    413: messages.GUARD_TOO_LARGE,
    500: messages.GUARD_ERROR,
}


def _cap(text: str) -> str:
    return text if len(text) <= _CAP else text[: _CAP - 1] + "…"


def route_of(request: web.Request) -> str:
    """``GET /auth/{token}``: the method and the route's pattern, never the path itself."""
    resource = request.match_info.route.resource
    pattern = resource.canonical if resource is not None else "(no route)"
    return f"{_cap(request.method)} {_cap(pattern)}"


def plain(status: int, text: str | None = None, *, headers: dict[str, str] | None = None) -> web.Response:
    """A short ``text/plain`` answer: ``text``, else this module's sentence for ``status``."""
    sentence = text or _SENTENCES.get(status) or messages.guard_status(status)
    return web.Response(
        status=status,
        text=sentence + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={**_PLAIN_HEADERS, **(headers or {})},
    )


def _is_stock(exc: web.HTTPException) -> bool:
    """aiohttp's own text for this status (the router's, ``client_max_size``'s), not a handler's sentence."""
    return exc.status == 413 or exc.text in (None, f"{exc.status}: {exc.reason}")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not _is_stock(exc):
            raise
        if exc.status == 413:
            log.info("refused an oversized body on %s", route_of(request))
        kept = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
        return plain(exc.status, headers=kept)
    except (ValueError, RecursionError, HttpProcessingError) as exc:
        log.info("refused a malformed request on %s: %s", route_of(request), _cap(type(exc).__name__))
        return plain(400)
    except ConnectionResetError:
        # The client went away mid-request: nobody reads the answer, and aiohttp would log the
        # exception with a traceback at ERROR if it escaped.
        log.debug("the client went away during %s", route_of(request))
        return plain(400)
    except Exception as exc:
        report(exc, request)
        return plain(500)


def report(exc: BaseException, request: web.Request) -> None:
    """Log an unexpected failure as one ERROR line (type and route); its traceback only at DEBUG.

    For handlers that answer a failure themselves (the authentication pages render their own 500).
    """
    log.error("unhandled %s on %s", _cap(type(exc).__name__), route_of(request))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("the traceback of that %s", _cap(type(exc).__name__), exc_info=exc)


class _OneLine(logging.Filter):
    """On ``aiohttp.server``: a client's malformed HTTP is one INFO line; anything else one ERROR
    line; the traceback stays only when DEBUG is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        exc = record.exc_info[1]
        name = _cap(type(exc).__name__)
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "refused malformed HTTP from a client: %s", (name,)
        else:
            record.msg, record.args = "unhandled %s in the HTTP server", (name,)
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            record.exc_info, record.exc_text = None, None
        return True


_ONE_LINE = _OneLine()


def install(app: web.Application) -> None:
    """Put :func:`guard` in front of every handler of ``app``, and keep aiohttp's own error log to one line."""
    app.middlewares.append(guard)
    server_log = logging.getLogger("aiohttp.server")
    if _ONE_LINE not in server_log.filters:
        server_log.addFilter(_ONE_LINE)
