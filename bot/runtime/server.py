"""``ackgate serve`` as a process: the checks made before starting, listening, and a graceful stop.

:func:`preflight` is every refusal ``serve`` makes before it listens, without opening anything;
``ackgate check-config --env`` runs the same function, so the two cannot disagree.

:func:`serve` binds the port first (a port in use is one line and exit 2), starts the application,
logs one "listening on" line, and on SIGTERM or SIGINT stops gracefully within
``ACKGATE_DRAIN_SECONDS``: it stops accepting connections, lets requests being answered finish,
waits for the work they started (Slack listeners run after the acknowledgement), lets the
scheduler finish its pass, and closes the store last (see ``lifecycle`` in :mod:`bot.runtime.app`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from bot.adapters.provisioners import require_secret
from bot.core.errors import ConfigError
from bot.core.policy import Policy
from bot.core.policy_file import load_policy
from bot.core.secrets import SecretBox
from bot.runtime.app import INFLIGHT, build_app
from bot.runtime.config import Settings
from bot.runtime.version import version
from storage import open_store

log = logging.getLogger("ackgate")


def preflight(settings: Settings, *, policy: Policy | None = None) -> web.Application:
    """Everything ``serve`` checks before it listens, without connecting to anything: the policy
    (from ``ACKGATE_POLICY_FILE`` unless given) and every part built from the settings.

    Returns the application ``serve`` runs; ``check-config --env`` discards it. Raises
    :class:`ConfigError` with one line naming the setting and the fix."""
    if policy is None:
        if settings.policy_file is None:
            raise ConfigError("ACKGATE_POLICY_FILE is not set: point it at your policy YAML.")
        policy = load_policy(settings.policy_file, platforms=settings.chat_platforms)
    # build_app refuses these too; named here so the order of the refusals does not depend on it
    open_store(settings.database_url)  # a URL Ackgate cannot use
    if settings.secret_key is not None:
        SecretBox(settings.secret_key)  # too short a key
    require_secret(policy, settings.provisioner_secret)
    return build_app(settings, policy=policy)  # builds, connects nothing until it starts


def storage_description(url: str) -> str:
    """The database URL without its credentials or query (which may carry a password)."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "sqlite":
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


def platforms(settings: Settings) -> list[str]:
    return list(settings.chat_platforms)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or :class:`ConfigError` in one line naming the setting."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"ACKGATE_HOST {host!r} cannot be listened on ({exc.strerror or exc}).") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: restarts reuse the port
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"Port {port} on {host} is already in use (ACKGATE_PORT={port}): stop what is listening there, "
                "or set ACKGATE_PORT to a free port."
            ) from None
        raise ConfigError(
            f"Cannot listen on {host}:{port} ({exc.strerror or exc}): check ACKGATE_HOST and ACKGATE_PORT "
            "(ports below 1024 need privileges)."
        ) from None
    sock.setblocking(False)
    return sock


async def serve(app: web.Application, settings: Settings) -> int:
    """Serve ``app`` until SIGTERM or SIGINT, then stop gracefully. Returns the exit code (0)."""
    sock = _bind(settings.host, settings.port)
    inflight = app[INFLIGHT]
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=settings.drain_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await runner.setup()  # opens the store, starts the scheduler
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            raise
        host, port = sock.getsockname()[:2]
        log.info(
            "Ackgate %s listening on http://%s:%s (platforms: %s; storage: %s)",
            version(),
            f"[{host}]" if ":" in str(host) else host,
            port,
            ", ".join(platforms(settings)) or "none",
            storage_description(settings.database_url),
            extra={"version": version(), "port": port, "storage": storage_description(settings.database_url)},
        )
        await stop.wait()
        log.info("stopping: finishing in-flight work for up to %g s", settings.drain_seconds)
        inflight.begin_stop(settings.drain_seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        # Stops listening, waits for requests being answered, then runs the app's cleanup:
        # background work, the scheduler, the clients and, last, the store.
        await runner.cleanup()
    log.info("stopped")
    return 0
