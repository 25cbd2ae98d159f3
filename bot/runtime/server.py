"""``ackgate serve`` as a process: the checks made before starting, listening, and a graceful stop.

:func:`preflight` is every refusal ``serve`` makes before it listens, without opening anything;
``ackgate check-config --env`` runs the same function, so the two cannot disagree.

:func:`serve` binds the port first (a port in use is one line and exit 2), starts the application,
logs one "listening on" line, and on SIGTERM or SIGINT stops gracefully within
``ACKGATE_DRAIN_SECONDS``: it stops accepting connections, lets requests being answered finish,
waits for the work they started (Slack listeners run after the acknowledgement), lets the
scheduler finish its pass, and closes the store last (see ``lifecycle`` in :mod:`bot.runtime.app`).

:func:`serve_workers` is ``serve --workers N``: N processes each listening on the same port
(``SO_REUSEPORT``: the kernel spreads connections among them), on PostgreSQL or SQLite (always in
WAL; not ``:memory:``, which each process would have alone). Each worker is the whole of Ackgate with
an instance id of its own (``<instance>:w<i>``), so every claim it takes (commands, revokes, outbox,
webhook events) is its own and is taken back when that worker starts again. The parent migrates the
database once, starts the workers, forwards SIGTERM and SIGINT to all of them and waits for each to
stop gracefully; if one dies, it stops the others and exits with that worker's code.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
import subprocess
import sys
import time
from types import FrameType
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


def _bind(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A listening socket on host:port, or :class:`ConfigError` in one line naming the setting.
    ``reuse_port``: shared with the other workers of ``serve --workers``."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"ACKGATE_HOST {host!r} cannot be listened on ({exc.strerror or exc}).") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: restarts reuse the port
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
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


async def serve(app: web.Application, settings: Settings, *, reuse_port: bool = False) -> int:
    """Serve ``app`` until SIGTERM or SIGINT, then stop gracefully. Returns the exit code (0)."""
    sock = _bind(settings.host, settings.port, reuse_port=reuse_port)
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
        settle_garbage_collector()
        host, port = sock.getsockname()[:2]
        log.info(
            "Ackgate %s listening on http://%s:%s (platforms: %s; storage: %s)",
            version(),
            f"[{host}]" if ":" in str(host) else host,
            port,
            ", ".join(platforms(settings)) or "none",
            storage_description(settings.database_url),
            extra={
                "version": version(),
                "port": port,
                "storage": storage_description(settings.database_url),
                "instance": settings.instance_id,
                "pagerduty_requests_per_minute": settings.pagerduty_requests_per_minute,
            },
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


# A full collection walks every live object: under load (a backlog of queued jobs, flows waiting on
# PagerDuty) it took 130-280 ms, and at the default (a full pass every 10 second-generation ones,
# about every 1.5 s at 500 requests/s) it set the acknowledgements' p99. A full pass every 100
# leaves the young generations as they are (their passes take 0.1-5 ms) and makes the long pause
# ten times rarer; measured in bench/results-stop12-p1p2p3.md.
GC_THRESHOLDS = (700, 10, 100)


def settle_garbage_collector() -> None:
    """Move everything start-up built (modules, the app, the policy) out of the collector's sight,
    so a full collection walks only what serving creates (issue 9 measured 53–68 ms full
    collections setting the ack maximum), set the thresholds (:data:`GC_THRESHOLDS`), and turn
    the collector on (``serve`` starts with it off).

    No collection first: start-up leaves a couple of thousand objects of garbage (measured: about
    2,000), frozen with the rest, where a full collection before the first request took 45–100 ms."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.enable()


WORKER_STOP_MARGIN = 10.0  # seconds past the drain time a worker is given to exit before it is killed


def worker_settings(settings: Settings, index: int, count: int) -> Settings:
    """Worker ``index`` of ``count``: its own instance id (the process's, with ``:w<index>``), and
    its share of the PagerDuty request budget, which is PagerDuty's per API key, so the workers
    together stay under ``PAGERDUTY_REQUESTS_PER_MINUTE`` instead of each spending all of it."""
    from bot.runtime.app import instance_id

    return settings.model_copy(
        update={
            "instance_id": f"{instance_id(settings)}:w{index}",
            "pagerduty_requests_per_minute": max(1, settings.pagerduty_requests_per_minute // count),
        }
    )


async def _migrate(url: str) -> None:
    store = open_store(url)
    await store.open()  # applies pending migrations, once, before the workers open it together
    await store.close()


def serve_workers(settings: Settings, workers: int) -> int:
    """Run ``workers`` processes of ``ackgate serve`` on one port; returns the exit code."""
    if settings.database_url.lower().startswith("sqlite") and ":memory:" in settings.database_url:
        raise ConfigError(
            "serve --workers needs a database the workers share: set ACKGATE_DATABASE_URL to a SQLite file "
            "or PostgreSQL, not sqlite:///:memory:."
        )
    _bind(settings.host, settings.port, reuse_port=True, listen=False).close()  # a port in use: one line, exit 2
    asyncio.run(_migrate(settings.database_url))
    stopping = False
    children: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(workers):
            command = [sys.executable, "-m", "bot.runtime.cli", "serve", "--worker", f"{index}/{workers}"]
            children.append(subprocess.Popen(command))  # noqa: S603 - our own interpreter and module
        log.info("started %d workers on port %s", workers, settings.port, extra={"workers": workers})
        code = 0
        while not stopping:
            ended = next((c for c in children if c.poll() is not None), None)
            if ended is not None:
                code = ended.returncode or 1
                log.error("worker %d exited with %s; stopping the others", children.index(ended), ended.returncode)
                stop(signal.SIGTERM, None)
                break
            time.sleep(0.2)
        deadline = time.monotonic() + settings.drain_seconds + WORKER_STOP_MARGIN
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("a worker did not stop in time; killing it")
                child.kill()
                child.wait()
            if child.returncode not in (0, -signal.SIGTERM) and code == 0:
                code = child.returncode if child.returncode > 0 else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped %d workers", workers)
    return code
