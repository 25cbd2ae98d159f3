"""What a killed instance held is finished as soon as it starts again, through the real app: a
request stored with no approver shown gets its cards, once; a command or a click acknowledged and
never answered is answered; a webhook event it was processing takes effect, and an incident's first
mirror message it held is posted even when a rival applied newer events meanwhile; with no waiting
for leases. A rival replica's claim keeps its lease, and is taken over once it ends. Clicks are
recorded, so a Slack retry runs once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest

from bot.core.clock import FakeClock
from bot.core.domain import ReceivedCommand, RequestStatus, claim_token
from bot.core.mirror import POST_CLAIM_LEASE
from bot.runtime.simulators import slack_requests
from bot.runtime.simulators.stage import MIRROR_CHANNEL, Stage
from tests.fakes.incident_world import webhook_body
from tests.fakes.stage_fixtures import request_id_in
from tests.fakes.storage_fixtures import make_request, opened

POLICY = """\
version: 1
resources:
  - name: prod-k8s
    max_duration: 8h
flows:
  - name: k8s-approval
    resources: [prod-k8s]
    requesters:
      anyone: true
    approval:
      type: approvers
      approvers: [bob@example.com, carol@example.com]
    default_duration: 30m
    max_duration: 2h
"""

ME = "replica-a"
RIVAL = "replica-b"


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = FakeClock()

    def stage(self, instance: str = ME, *, run_scheduler: bool = True) -> Stage:
        policy = self.tmp_path / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        settings = {"instance_id": instance, "mirror_services": ["PSVC001"]}
        return Stage(
            policy_file=policy, workdir=self.tmp_path, clock=self.clock, settings=settings, run_scheduler=run_scheduler
        )

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.tmp_path / 'ackgate.db'}"  # where the stage keeps its store


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


async def until(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within time")


@pytest.fixture
async def first_run(rig: Rig) -> None:
    """Migrate the database (an earlier run of the app), so a test can leave rows as a kill would."""
    async with rig.stage():
        pass


async def test_a_request_stored_before_a_kill_gets_its_cards_at_restart_and_only_once(
    rig: Rig, first_run: None
) -> None:
    now = rig.clock.now()
    made = {"resource": "prod-k8s", "flow": "k8s-approval", "created_at": now - timedelta(seconds=30)}
    async with opened(rig.database_url) as before_the_kill:
        # Stored (with its audit) and killed before any card was posted; killed while posting; and one
        # a live rival replica is posting right now (its claim's lease runs).
        await before_the_kill.requests.add(make_request("r-unposted1", **made))  # type: ignore[arg-type]
        await before_the_kill.requests.add(make_request("r-mine00001", **made))  # type: ignore[arg-type]
        await before_the_kill.requests.add(make_request("r-rivals001", **made))  # type: ignore[arg-type]
        lease = now + timedelta(seconds=60)
        assert await before_the_kill.messages.claim_cards("r-mine00001", owner=ME, now=now, until=lease)
        assert await before_the_kill.messages.claim_cards("r-rivals001", owner=RIVAL, now=now, until=lease)

    stage = rig.stage()
    bob, carol = stage.person("bob"), stage.person("carol")  # in Slack before the app starts
    async with stage:
        await stage.wait_for_dm(bob, "r-unposted1")
        await stage.wait_for_dm(carol, "r-mine00001")
        await stage.pass_time(5)
        await asyncio.sleep(0.2)
        for who in (bob, carol):
            shown = "\n".join(stage.dms(who))
            assert shown.count("r-unposted1") == 1
            assert shown.count("r-mine00001") == 1
            assert "r-rivals001" not in shown  # the rival is alive and posting it
        # The rival died after all: once its lease ends, the cards are posted here.
        await stage.pass_time(60)
        await stage.wait_for_dm(bob, "r-rivals001")
        # Bob approves from the recovered card.
        assert "You approved" in (await stage.click(bob, "approve", "r-unposted1")).text

    stage = rig.stage()
    carol = stage.person("carol")
    async with stage:  # another restart posts nothing again
        await stage.pass_time(5)
        await asyncio.sleep(0.2)
        assert stage.dms(carol) == []


async def test_the_live_path_claims_its_cards_so_the_reconciler_never_doubles_them(rig: Rig) -> None:
    async with rig.stage() as stage:
        alice, bob = stage.person("alice"), stage.person("bob")
        await stage.command(alice, "prod-k8s 1h roll the canary back")
        request_id = request_id_in(await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s"))
        for _ in range(3):
            await stage.pass_time(10)
        await asyncio.sleep(0.2)
        assert sum(request_id in text for text in stage.dms(bob)) == 1
        assert (await stage.parts.store.requests.get(request_id)).status is RequestStatus.PENDING  # type: ignore[union-attr]


def recorded(key: str, kind: str, text: str, *, user_id: str, owner: str, at: datetime) -> ReceivedCommand:
    # No response_url: the answer goes by DM, which is what the test reads.
    return ReceivedCommand(
        key=key,
        kind=kind,
        user_id=user_id,
        text=text,
        received_at=at,
        lease_until=at + timedelta(seconds=60),
        claimed_by=owner,
    )


async def unanswered(stage: Stage, at: datetime) -> list[str]:
    taken = await stage.parts.store.commands.claim_unanswered(
        at, lease_until=at, received_after=at - timedelta(days=1), max_attempts=3
    )
    return [c.key for c in taken]


async def test_a_command_and_a_click_a_kill_left_unanswered_are_answered_at_restart(rig: Rig) -> None:
    async with rig.stage() as stage:
        alice, bob = stage.person("alice"), stage.person("bob")
        await stage.command(alice, "prod-k8s 1h roll the canary back")
        request_id = request_id_in(await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s"))

    now = rig.clock.now()
    async with opened(rig.database_url) as before_the_kill:
        # Acknowledged to Slack by this instance, then it was killed before answering either; and a
        # command a rival replica is answering right now.
        rows = (
            recorded("command:mine", "command", "revoke g-nosuch99", user_id=alice.user_id, owner=ME, at=now),
            recorded("click:mine", "click", f"approve {request_id}", user_id=bob.user_id, owner=ME, at=now),
            recorded("command:rival", "command", "revoke g-rival999", user_id=alice.user_id, owner=RIVAL, at=now),
        )
        for row in rows:
            assert await before_the_kill.commands.record(row)

    stage = rig.stage()
    alice, bob = stage.person("alice"), stage.person("bob")
    async with stage:
        # The start-up pass answers this instance's two at once; no lease had to run out.
        await stage.wait_for_dm(alice, "g-nosuch99")
        await stage.wait_for_dm(bob, "You approved alice@example.com")
        assert (await stage.parts.store.requests.get(request_id)).status is RequestStatus.APPROVED  # type: ignore[union-attr]
        assert not any("g-rival999" in t for t in stage.dms(alice))  # its owner's lease still runs
        await asyncio.sleep(0.3)  # the rows are marked answered right after the DMs
        assert await unanswered(stage, rig.clock.now() + timedelta(seconds=61)) == ["command:rival"]


async def test_a_click_is_recorded_so_a_slack_retry_decides_once(rig: Rig) -> None:
    async with rig.stage() as stage:
        alice, bob = stage.person("alice"), stage.person("bob")
        await stage.command(alice, "prod-k8s 1h roll the canary back")
        request_id = request_id_in(await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s"))
        url = stage.slack.response_url("retried")
        payload = slack_requests.block_actions_payload(
            user_id=bob.user_id, action_id="ackgate.approve", value=request_id, response_url=url
        )
        body = urlencode({"payload": json.dumps(payload)})
        assert (await stage.post(body))[0] == 200
        await stage.slack.wait_for(lambda: bool(stage.slack.responses.get("retried")))
        assert (await stage.post(body))[0] == 200  # Slack's retry: same trigger id
        await asyncio.sleep(0.2)
        assert len(stage.slack.responses["retried"]) == 1
        assert (await stage.parts.store.requests.get(request_id)).status is RequestStatus.APPROVED  # type: ignore[union-attr]
        # Answered, so no recovery pass answers it again.
        assert await unanswered(stage, rig.clock.now() + timedelta(hours=1)) == []


async def test_a_webhook_event_a_kill_left_claimed_takes_effect_at_restart(rig: Rig, first_run: None) -> None:
    now = rig.clock.now()
    body = webhook_body("incident.triggered", incident_id="PKILLED", at=now, event_id="01KILLED")
    async with opened(rig.database_url) as before_the_kill:
        assert await before_the_kill.inbox.add("01KILLED", event_type="incident.triggered", body=body.decode(), at=now)
        token = claim_token(ME)  # this instance was processing it when killed
        assert await before_the_kill.inbox.claim("01KILLED", token=token, now=now, until=now + timedelta(minutes=2))
        # ... and had claimed the incident's first mirror post too.
        post_lease = now + timedelta(seconds=60)
        assert await before_the_kill.mirrors.claim_post("PKILLED", token=token, now=now, until=post_lease)

    async with rig.stage() as stage:
        await until(lambda: len(stage.channel_messages(MIRROR_CHANNEL)) == 1)  # no clock moved: no lease ran out
        mirror = await stage.parts.store.mirrors.get("PKILLED")
        assert mirror is not None


async def processed(stage: Stage, event_id: str) -> None:
    """Until the app has finished the webhook event (it processes after the 202, in the background).
    A day ahead every lease has lapsed, so ``due`` lists every event not yet done."""
    for _ in range(500):
        due = await stage.parts.store.inbox.due(stage.clock.now() + timedelta(days=1))
        if event_id not in {d.event_id for d in due}:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"webhook event {event_id} was not processed")


async def killed_holding_the_first_post(url: str, incident_id: str, *, owner: str, at: datetime, began: bool) -> None:
    """What a SIGKILL leaves of ``owner`` processing the incident's ``triggered`` event: the event
    claimed in the inbox, and the incident's first mirror post claimed (its chat call begun or not)."""
    event_id = f"01{incident_id}T"
    body = webhook_body("incident.triggered", incident_id=incident_id, at=at, event_id=event_id)
    token = claim_token(owner)
    async with opened(url) as before_the_kill:
        assert await before_the_kill.inbox.add(event_id, event_type="incident.triggered", body=body.decode(), at=at)
        assert await before_the_kill.inbox.claim(event_id, token=token, now=at, until=at + timedelta(minutes=2))
        assert await before_the_kill.mirrors.claim_post(incident_id, token=token, now=at, until=at + POST_CLAIM_LEASE)
        if began:
            assert await before_the_kill.mirrors.sending(incident_id, token=token)


def acknowledged(incident_id: str, at: datetime) -> tuple[bytes, str]:
    event_id = f"01{incident_id}A"
    body = webhook_body("incident.acknowledged", incident_id=incident_id, at=at, event_id=event_id, agent="Bob")
    return body, event_id


async def test_a_mirror_post_a_kill_left_claimed_is_made_at_restart_though_a_rival_applied_a_newer_event(
    rig: Rig, first_run: None
) -> None:
    """The rival's newer event lost the first post to the dead claim and finished; at restart the
    older event the killed instance held is stale and changes nothing, yet the message is posted,
    once, showing the newer status."""
    now = rig.clock.now()
    await killed_holding_the_first_post(rig.database_url, "PSTALE1", owner=ME, at=now, began=False)
    body, event_id = acknowledged("PSTALE1", now + timedelta(seconds=1))
    async with rig.stage(RIVAL, run_scheduler=False) as rival:
        assert await rival.webhook(body) == 202
        await processed(rival, event_id)
        assert rival.channel_messages(MIRROR_CHANNEL) == []  # the dead claim's lease still runs

    async with rig.stage() as stage:
        await until(lambda: len(stage.channel_messages(MIRROR_CHANNEL)) == 1)  # no clock moved: no lease ran out
        await processed(stage, "01PSTALE1T")
        await stage.pass_time(10)
        await asyncio.sleep(0.2)
        [message] = stage.channel_messages(MIRROR_CHANNEL)
        assert "Acknowledged by Bob" in message


async def test_a_mirror_post_a_dead_rival_began_is_made_here_once_its_lease_ends_and_only_once(
    rig: Rig, first_run: None
) -> None:
    """A rival died in the chat call of an incident's first post, so its message may exist and only
    the lease ends the claim; the event applied here meanwhile lost the post to it. Once the lease
    ends, this instance posts the message, once, and the stale event it then takes over adds none."""
    now = rig.clock.now()
    await killed_holding_the_first_post(rig.database_url, "PDEAD01", owner=RIVAL, at=now, began=True)
    body, event_id = acknowledged("PDEAD01", now + timedelta(seconds=1))
    async with rig.stage() as stage:
        assert await stage.webhook(body) == 202
        await processed(stage, event_id)
        await stage.pass_time(POST_CLAIM_LEASE.total_seconds() - 10)
        await asyncio.sleep(0.2)
        assert stage.channel_messages(MIRROR_CHANNEL) == []  # the rival's lease still runs
        await stage.pass_time(11)
        await until(lambda: len(stage.channel_messages(MIRROR_CHANNEL)) == 1)
        for _ in range(3):  # the rival's inbox lease ends too: its stale event is taken over here
            await stage.pass_time(60)
        await processed(stage, "01PDEAD01T")
        await asyncio.sleep(0.2)
        [message] = stage.channel_messages(MIRROR_CHANNEL)
        assert "Acknowledged by Bob" in message
