"""``ackgate``: run the server, check the configuration, export the audit log, or play the demo.

A configuration error prints one line naming the setting and the fix, and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import sys
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from bot.core.errors import AckgateError, ConfigError


def _serve(args: argparse.Namespace) -> int:
    # Start-up builds a great deal and frees almost nothing: the collector's passes over it were a
    # quarter of the time to ready (issue 9, P5). Off until listening, when serve() freezes what
    # start-up built and turns it back on (server.settle_garbage_collector); on again here however
    # start-up ends.
    gc.disable()
    try:
        return _start(args)
    finally:
        gc.enable()


def _start(args: argparse.Namespace) -> int:
    from bot.runtime import logs
    from bot.runtime.config import load_settings
    from bot.runtime.server import preflight, serve, serve_workers, settle_garbage_collector, worker_settings

    settings = load_settings()
    workers: int = getattr(args, "workers", 1)
    worker: tuple[int, int] | None = getattr(args, "worker", None)
    if workers > 1:
        preflight(settings)  # every refusal once, here, before any worker starts
        logs.configure(settings.log_level)
        settle_garbage_collector()  # the parent only waits on its workers from here
        return serve_workers(settings, workers)
    if worker is not None:
        settings = worker_settings(settings, *worker)
    app = preflight(settings)
    logs.configure(settings.log_level)
    return _run(serve(app, settings, reuse_port=worker is not None))


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run the server's loop (:func:`bot.runtime.loops.lane_loop_factory`: uvloop's, with the background lane)."""
    from bot.runtime.loops import lane_loop_factory

    with asyncio.Runner(loop_factory=lane_loop_factory()) as runner:
        return runner.run(main)


def _worker(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError("--worker takes <index>/<count>, as serve --workers passes it")
    return int(index), int(count)


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError("--workers takes a number of processes from 1 to 64")
    return n


def _check_config(args: argparse.Namespace) -> int:
    from bot.core.policy_file import load_policy
    from bot.runtime.config import load_settings

    path: Path | None = args.policy
    env = load_settings(require_runtime=False)
    if path is None:
        path = env.policy_file
    if path is None:
        raise ConfigError("No policy file: pass --policy FILE or set ACKGATE_POLICY_FILE.")
    # Approval channels must be on a configured chat platform; with none configured here (a policy
    # checked away from its deployment), only their syntax is checked.
    policy = load_policy(path, platforms=env.chat_platforms or None)
    if args.env:
        from bot.runtime.server import preflight  # the server's stack only for the settings it checks

        # exactly what `serve` checks before it listens
        preflight(load_settings(), policy=policy)
    print(f"{path}: OK ({len(policy.resources)} resources, {len(policy.flows)} flows)")
    return 0


async def _export_audit(since: timedelta, fmt: str, out: TextIO) -> int:
    from bot.core.clock import SystemClock
    from bot.runtime.config import load_settings
    from storage import open_store

    settings = load_settings(require_runtime=False)
    store = open_store(settings.database_url)
    await store.open()
    try:
        events = await store.audit.since(SystemClock().now() - since)
    finally:
        await store.close()
    rows = [
        {"seq": e.seq, "at": e.at.isoformat(), "kind": e.kind, "actor": e.actor, "subject": e.subject, "data": e.data}
        for e in events
    ]
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        writer = csv.DictWriter(out, fieldnames=["seq", "at", "kind", "actor", "subject", "data"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "data": json.dumps(row["data"], ensure_ascii=False)})
    return 0


def _audit(args: argparse.Namespace) -> int:
    from bot.core.durations import parse_duration

    return asyncio.run(_export_audit(parse_duration(args.since), args.format, sys.stdout))


def _manifest(args: argparse.Namespace) -> int:
    from bot.runtime.config import load_settings
    from handlers.teams.manifest import PackageError, build_package

    settings = load_settings(require_runtime=False)
    if settings.microsoft_app_id is None:
        raise ConfigError(
            "MICROSOFT_APP_ID is not set: the Teams app package names the Azure Bot's Microsoft App ID (a GUID)."
        )
    try:
        manifest = build_package(settings.microsoft_app_id, settings.public_url, args.zip)
    except PackageError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"Could not write {args.zip}: {exc.strerror or exc}.") from None
    print(f"{args.zip}: Teams app package for bot {manifest['bots'][0]['botId']} at {manifest['validDomains'][0]}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bot.runtime.demo import run_demo

    return asyncio.run(run_demo(verbose=args.verbose))


def parser() -> argparse.ArgumentParser:
    from bot.runtime.version import version

    p = argparse.ArgumentParser(prog="ackgate", description="Just-in-time production access, gated on PagerDuty.")
    p.add_argument("--version", action="version", version=f"ackgate {version()}")
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the server (the default)")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="processes listening on the one port (SO_REUSEPORT); PostgreSQL or a SQLite file (default 1)",
    )
    # set by --workers for each process: "<index>/<count>"
    serve.add_argument("--worker", type=_worker, help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)
    check = sub.add_parser("check-config", help="validate the policy file (and, with --env, the settings)")
    check.add_argument("--policy", type=Path, help="policy file (default: ACKGATE_POLICY_FILE)")
    check.add_argument("--env", action="store_true", help="also check the environment settings")
    check.set_defaults(run=_check_config)
    audit = sub.add_parser("audit", help="export the audit log")
    audit.add_argument("--since", default="24h", help="how far back, e.g. 24h or 7d (default 24h)")
    audit.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    audit.set_defaults(run=_audit)
    manifest = sub.add_parser("manifest", help="write a chat platform's app package")
    manifest.add_argument("platform", choices=["teams"], help="the platform (teams)")
    manifest.add_argument("--zip", type=Path, required=True, help="the .zip file to write")
    manifest.set_defaults(run=_manifest)
    demo = sub.add_parser("demo", help="play a scripted scenario against built-in PagerDuty and Slack simulators")
    demo.add_argument("--verbose", action="store_true", help="also show the server's logs")
    demo.set_defaults(run=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run = getattr(args, "run", _serve)
    try:
        code: int = run(args)
    except ConfigError as exc:
        print(f"ackgate: {exc.message}", file=sys.stderr)
        return 2
    except AckgateError as exc:
        print(f"ackgate: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
