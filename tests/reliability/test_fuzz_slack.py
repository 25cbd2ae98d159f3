"""Fuzzing Slack's entry point with hypothesis: validly signed slash commands and interaction payloads
of every type (documented shapes, mutated), and the signature headers themselves. Every answer is
below 500, shows no traceback and comes within a second; no chat message shows a traceback; the
server is healthy afterwards. ``ACKGATE_FUZZ_EXAMPLES`` sets the size (see ``fuzz_support``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given

from tests.reliability.fuzz_strategies import Case, interactions, slack_signature_headers, slash_commands
from tests.reliability.fuzz_support import Fuzzer, LiveCluster, fuzz_settings


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    with LiveCluster(tmp_path_factory.mktemp("fuzz-slack")) as live:
        yield live


def _root(live: LiveCluster) -> str:
    return live.cluster.slack.response_url("x").removesuffix("/response/x")


def _send(fuzzer: Fuzzer, case: Case) -> None:
    fuzzer.check(case.method, case.path, case.body, case.headers, case.label)


def test_signed_interaction_payloads_never_get_a_5xx_a_traceback_or_a_slow_answer(live: LiveCluster) -> None:
    fuzzer = Fuzzer(live, "slack-interactions")

    @fuzz_settings(0.25)
    @given(case=interactions(_root(live)))
    def fuzz(case: Case) -> None:
        _send(fuzzer, case)

    fuzz()
    fuzzer.finish()


def test_signed_slash_commands_never_get_a_5xx_a_traceback_or_a_slow_answer(live: LiveCluster) -> None:
    fuzzer = Fuzzer(live, "slack-commands")

    @fuzz_settings(0.15)
    @given(case=slash_commands(_root(live)))
    def fuzz(case: Case) -> None:
        _send(fuzzer, case)

    fuzz()
    fuzzer.finish()


def test_mangled_slack_signature_headers_are_refused_with_a_4xx(live: LiveCluster) -> None:
    """Unsigned, badly signed, stale or oddly stamped: a 401 (never a 5xx), and nothing runs."""
    fuzzer = Fuzzer(live, "slack-signatures")
    before = len(live.cluster.slack.responses.get("fuzz-signature", []))

    @fuzz_settings(0.1)
    @given(case=slack_signature_headers(_root(live)))
    def fuzz(case: Case) -> None:
        answer = fuzzer.check(case.method, case.path, case.body, case.headers, case.label)
        assert answer.status == 401 or (fuzzer_surveying() and answer.status >= 500), (case.label, answer.status)

    fuzz()
    fuzzer.finish()
    assert len(live.cluster.slack.responses.get("fuzz-signature", [])) == before, "a mangled request was executed"


def fuzzer_surveying() -> bool:
    from tests.reliability.fuzz_support import surveying

    return surveying()
