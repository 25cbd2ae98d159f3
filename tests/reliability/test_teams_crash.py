"""A Teams message acknowledged by a real ``ackgate serve`` (202), which is then SIGKILLed before it
answered, is answered exactly once in Teams after the restart: the message was recorded in the command
inbox before the 202, the restarted instance took back its own claim at start-up, and the Teams recovery
pass answered it proactively in the conversation. A redelivery of the same activity runs nothing.

The Teams simulator runs in the test process beside the other fakes; the serve process reaches it on
loopback with the same settings a deployment uses, and every activity carries a simulator-signed token.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.runtime.simulators.teams import TeamsSimulator
from bot.runtime.simulators.teams_stage import TeamsSide, activity_text
from tests.reliability.harness import AUTO, Cluster, Fakes, Server, SqliteDatabase, poll

MEMBER_LOOKUP = "Conversations_GetConversationMember"


@dataclass
class Rig:
    fakes: Fakes
    sim: TeamsSimulator
    cluster: Cluster
    server: Server
    teams: TeamsSide


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    fakes, sim = Fakes(), TeamsSimulator()
    await fakes.start()
    await sim.start()
    cluster = Cluster(
        fakes=fakes,
        database=SqliteDatabase(tmp_path / "ackgate.db"),
        workdir=tmp_path,
        extra_env={
            "MICROSOFT_APP_ID": sim.app_id,
            "MICROSOFT_APP_PASSWORD": sim.app_password,
            "MICROSOFT_APP_TENANT_ID": sim.tenant_id,
            "TEAMS_OPENID_METADATA_URL": sim.openid_metadata_url,
            "TEAMS_LOGIN_URL": sim.login_url,
            "TEAMS_SERVICE_URL": sim.service_url,
            "TEAMS_SERVICE_URL_HOSTS": "127.0.0.1",
        },
    )
    [server] = cluster.servers
    try:
        await cluster.start()
        yield Rig(fakes, sim, cluster, server, TeamsSide(sim, f"{server.url}/api/messages"))
    finally:
        await cluster.stop()
        await sim.stop()
        await fakes.stop()


def answered(rig: Rig) -> bool:
    database = rig.cluster.database
    assert isinstance(database, SqliteDatabase)
    with sqlite3.connect(database.path) as db:
        rows = list(db.execute("SELECT kind, answered_at FROM slack_commands"))
    return len(rows) == 1 and rows[0][0] == "teams_command" and rows[0][1] is not None


async def test_a_message_acknowledged_then_sigkilled_is_answered_once_in_teams_after_the_restart(rig: Rig) -> None:
    alice = rig.teams.person("alice")
    rig.fakes.pd.add_user(alice.email, "Alice")
    chat = rig.teams.chat_of(alice)
    # Teams' member lookup (the first Bot Connector call after the ack) hangs, so the kill is sure to
    # fall between the 202 and the answer.
    rig.sim.delay_next(120, on="connector")
    activity = rig.teams.client.personal_message(alice.member, f"access {AUTO} 30m checking replication lag")

    posted = await rig.teams.client.post(activity)

    assert posted.status == 202
    assert await poll(lambda: rig.sim.calls_to(MEMBER_LOOKUP), within=10)
    await rig.server.kill()
    assert rig.teams.posted(chat) == []  # the user has heard nothing
    assert rig.fakes.receiver.calls == []  # nothing was granted before the kill

    rig.sim.clear_faults()
    await rig.server.start()
    assert await poll(lambda: rig.teams.posted(chat), within=30), "no answer in Teams after the restart"

    [answer] = rig.teams.posted(chat)
    assert answer.reply_to == activity["id"]  # a reply to her message, in her chat
    assert f"Access granted: {AUTO}" in activity_text(answer.activity)
    assert [call.action for call in rig.fakes.receiver.calls] == ["grant"]
    # Teams redelivers the activity it thinks was lost: acknowledged, and nothing runs again.
    again = await rig.teams.client.post(activity)
    assert again.status == 202
    # The row is marked answered, so no later recovery pass (every 15 s) answers it again.
    assert await poll(lambda: answered(rig), within=10)
    await poll(lambda: False, within=1)
    assert len(rig.teams.posted(chat)) == 1
    assert [call.action for call in rig.fakes.receiver.calls] == ["grant"]
    log = "\n".join(path.read_text() for path in rig.server.log_paths())
    assert "Traceback" not in log
