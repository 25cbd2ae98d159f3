"""Prometheus metrics, on a registry of Ackgate's own (so tests can build several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bot.core.reactions import Metrics


class PrometheusMetrics(Metrics):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ackgate_requests", "Access requests by outcome", ["outcome"], registry=self.registry)
        self.pagerduty_calls = Counter(
            "ackgate_pagerduty_calls", "PagerDuty REST calls", ["method", "path", "status"], registry=self.registry
        )
        self.pagerduty_latency = Histogram(
            "ackgate_pagerduty_call_seconds",
            "PagerDuty REST call latency",
            ["method", "path"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
            registry=self.registry,
        )
        self.active_grants = Gauge("ackgate_active_grants", "Grants active now", registry=self.registry)
        self.revoke_lag_seconds = Histogram(
            "ackgate_revoke_lag_seconds",
            "Seconds between a grant's expiry and its confirmed revoke",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 30, 120, 600),
            registry=self.registry,
        )
        self.revoke_failures = Counter(
            "ackgate_revoke_failures", "Provisioner revoke attempts that failed", registry=self.registry
        )
        self.webhook_signature_failures = Counter(
            "ackgate_webhook_signature_failures",
            "PagerDuty webhooks rejected for a bad signature (3 in a row disable the subscription)",
            registry=self.registry,
        )
        self.webhook_events = Counter(
            "ackgate_webhook_events", "PagerDuty webhook events accepted", ["event_type"], registry=self.registry
        )
        self.dependency_up = Gauge(
            "ackgate_dependency_up",
            "1 when the dependency answered its last check (storage, pagerduty, slack), else 0",
            ["dependency"],
            registry=self.registry,
        )
        self.webhook_events_parked = Counter(
            "ackgate_webhook_events_parked",
            "PagerDuty webhook events given up after repeated processing failures",
            registry=self.registry,
        )
        self.chat_messages_queued = Counter(
            "ackgate_chat_messages_queued",
            "Chat messages kept in the outbox after a failed send",
            registry=self.registry,
        )
        self.chat_messages_expired = Counter(
            "ackgate_chat_messages_expired",
            "Queued chat messages given up after the outbox's maximum age",
            registry=self.registry,
        )
        self.teams_activities = Counter(
            "ackgate_teams_activities", "Authenticated Teams activities by type", ["type"], registry=self.registry
        )
        self.teams_auth_failures = Counter(
            "ackgate_teams_auth_failures",
            "Requests to /api/messages refused 401, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.teams_connector_errors = Counter(
            "ackgate_teams_connector_errors",
            "Bot Connector (and token) calls that failed after their retries, by operation and HTTP status",
            ["operation", "status"],
            registry=self.registry,
        )

    def count(self, name: str, **labels: str) -> None:
        """:class:`bot.core.platforms.Counters`: one more on a platform's counter, e.g. ``teams_activities``."""
        counter = getattr(self, name)
        assert isinstance(counter, Counter), name
        counter.labels(**labels).inc()

    def outcome(self, outcome: str) -> None:
        self.requests.labels(outcome=outcome).inc()

    def revoke_lag(self, seconds: float) -> None:
        self.revoke_lag_seconds.observe(seconds)

    def revoke_failure(self) -> None:
        self.revoke_failures.inc()

    def pagerduty_call(self, method: str, path: str, status: int | None, seconds: float) -> None:
        self.pagerduty_calls.labels(method=method, path=path, status=str(status or "error")).inc()
        self.pagerduty_latency.labels(method=method, path=path).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
