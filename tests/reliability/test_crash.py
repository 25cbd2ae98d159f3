"""``ackgate serve`` as a child process, SIGKILLed at random moments during a mixed workload and
started again; separately, SIGTERMed under a backlog. Nothing may be lost either way.

The bounded sizes below run in ``make test``; ``make soak`` runs the full sizes
(``tests/reliability/soak.py``) and prints the same figures as a table.
"""

from __future__ import annotations

from tests.reliability.workload import Sizes, run

CRASH = Sizes(operations=100, concurrency=6, stops=3, incidents=10, retime_live=3, retime_down=2)
# A backlog: commands fired without waiting for their answers, then SIGTERM while it drains.
SIGTERM = Sizes(
    operations=100,
    concurrency=16,
    stop_signal="term",
    stops=1,
    incidents=0,
    retime_live=0,
    retime_down=0,
    wait_answers=False,
)


async def test_sigkill_at_random_moments_loses_no_grant_revoke_answer_or_audit_row() -> None:
    figures = await run(CRASH)
    assert not figures.failed(), figures.report("SIGKILL, one serve on SQLite")


async def test_sigterm_under_load_finishes_or_hands_over_every_acknowledged_request() -> None:
    figures = await run(SIGTERM)
    assert not figures.failed(), figures.report("SIGTERM under load, one serve on SQLite")
