"""Fuzzing the PagerDuty webhook endpoint with hypothesis: validly signed V3 deliveries built from
PagerDuty's examples and mutated (deep JSON, thousands-of-digits ids, wrong types, unknown event
types, bytes that are not JSON), and mangled signature headers. Every answer is below 500 (a 5xx
makes PagerDuty redeliver the poison body for 48 hours), shows no traceback and comes within a
second; the server is healthy afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given

from tests.reliability.fuzz_strategies import Case, webhook_signature_headers, webhooks
from tests.reliability.fuzz_support import Fuzzer, LiveCluster, fuzz_settings, surveying


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    with LiveCluster(tmp_path_factory.mktemp("fuzz-webhooks")) as live:
        yield live


def test_signed_hostile_webhooks_never_get_a_5xx_a_traceback_or_a_slow_answer(live: LiveCluster) -> None:
    fuzzer = Fuzzer(live, "pagerduty-webhooks")

    @fuzz_settings(0.2)
    @given(case=webhooks())
    def fuzz(case: Case) -> None:
        fuzzer.check(case.method, case.path, case.body, case.headers, case.label)

    fuzz()
    fuzzer.finish()


def test_mangled_webhook_signatures_are_refused_with_a_4xx(live: LiveCluster) -> None:
    fuzzer = Fuzzer(live, "pagerduty-webhook-signatures")

    @fuzz_settings(0.05)
    @given(case=webhook_signature_headers())
    def fuzz(case: Case) -> None:
        answer = fuzzer.check(case.method, case.path, case.body, case.headers, case.label)
        assert answer.status in (400, 401) or (surveying() and answer.status >= 500), (case.label, answer.status)

    fuzz()
    fuzzer.finish()
