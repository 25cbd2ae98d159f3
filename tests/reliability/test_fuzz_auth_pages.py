"""Fuzzing the authentication pages with hypothesis: ``GET``/``POST /auth/<token>`` with real, random,
huge and encoded tokens, forms that are malformed, multipart without a boundary or with broken parts,
wrong content types and huge bodies. Every answer is below 500, shows no traceback and comes within a
second; nothing is decided without a valid CSRF token; the server is healthy afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given

from bot.core.domain import AuthStatus
from tests.reliability.fuzz_strategies import Case, auth_pages
from tests.reliability.fuzz_support import Fuzzer, LiveCluster, fuzz_settings


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    with LiveCluster(tmp_path_factory.mktemp("fuzz-auth")) as live:
        cluster = live.cluster
        for target in ("bob", "carol"):
            live.run(cluster.ask_for_verification(cluster.person("alice"), cluster.person(target)))
        yield live


def test_hostile_auth_page_requests_never_get_a_5xx_a_traceback_or_a_slow_answer(live: LiveCluster) -> None:
    fuzzer = Fuzzer(live, "auth-pages")
    tokens = live.cluster.link_tokens()
    assert len(tokens) == 2, tokens

    @fuzz_settings(0.25)
    @given(case=auth_pages(lambda: tokens, live.cluster.url))
    def fuzz(case: Case) -> None:
        fuzzer.check(case.method, case.path, case.body, case.headers, case.label)

    fuzz()
    fuzzer.finish()
    # No fuzzed request carried a valid CSRF token, so nothing may have been decided.
    audit = live.run(live.cluster.audit())
    decided = [e.kind for e in audit if e.kind in (f"auth.{s.value}" for s in AuthStatus) and e.kind != "auth.pending"]
    assert decided == [], decided
