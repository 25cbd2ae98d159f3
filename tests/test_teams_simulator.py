"""The Teams simulator answers like the Bot Framework: token service, login and Bot Connector."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from jwt.algorithms import RSAAlgorithm

from bot.runtime.simulators.teams import SCOPE, TeamsSimulator
from bot.runtime.simulators.teams_client import TeamsClient, sign
from tests.fakes.teams_schemas import check_connector_body

CHANNEL = "19:ops@thread.tacv2"


@pytest.fixture
async def sim() -> AsyncIterator[TeamsSimulator]:
    async with TeamsSimulator(validator=check_connector_body) as teams:
        teams.add_member("29:alice", name="Alice A", email="alice@example.com")
        teams.add_member("29:bob", name="Bob B", email=None, upn="bob@example.com")
        teams.add_conversation(CHANNEL, members=("29:alice", "29:bob"))
        yield teams


async def _token(sim: TeamsSimulator, http: httpx.AsyncClient, **form: str) -> httpx.Response:
    body = {
        "grant_type": "client_credentials",
        "client_id": sim.app_id,
        "client_secret": sim.app_password,
        "scope": SCOPE,
        **form,
    }
    return await http.post(f"{sim.login_url}/{sim.tenant_id}/oauth2/v2.0/token", data=body)


async def _bearer(sim: TeamsSimulator, http: httpx.AsyncClient) -> dict[str, str]:
    token = (await _token(sim, http)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def test_openid_metadata_points_at_a_jwks_endorsed_for_msteams(sim: TeamsSimulator) -> None:
    async with httpx.AsyncClient() as http:
        metadata = (await http.get(sim.openid_metadata_url)).json()
        assert metadata["issuer"] == "https://api.botframework.com"
        keys = (await http.get(metadata["jwks_uri"])).json()["keys"]
    assert [(k["kid"], k["endorsements"]) for k in keys] == [("k1", ["msteams"])]
    assert (sim.metadata_requests, sim.jwks_requests) == (1, 1)


async def test_a_signed_token_verifies_with_the_published_key_and_rotation_adds_a_kid(sim: TeamsSimulator) -> None:
    token = sign(sim)
    jwk = sim.key("k1").jwk()
    claims = jwt.decode(token, RSAAlgorithm.from_jwk(json.dumps(jwk)), algorithms=["RS256"], audience=sim.app_id)
    assert claims["iss"] == "https://api.botframework.com" and claims["serviceurl"] == sim.service_url
    sim.rotate_key()
    assert jwt.get_unverified_header(sign(sim))["kid"] == "k2"
    assert [k.kid for k in sim.keys if k.published] == ["k1", "k2"]


async def test_the_token_endpoint_checks_credentials_and_counts_requests(sim: TeamsSimulator) -> None:
    async with httpx.AsyncClient() as http:
        ok = await _token(sim, http)
        wrong_secret = await _token(sim, http, client_secret="nope")
        wrong_scope = await _token(sim, http, scope="https://graph.microsoft.com/.default")
        wrong_tenant = await http.post(f"{sim.login_url}/botframework.com/oauth2/v2.0/token", data={})
    assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer" and ok.json()["expires_in"] == 3600
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    assert wrong_scope.status_code == 400 and wrong_tenant.status_code == 400
    assert sim.token_requests == 4


async def test_the_connector_refuses_calls_without_an_issued_token(sim: TeamsSimulator) -> None:
    url = f"{sim.service_url}v3/conversations/{CHANNEL}/activities"
    async with httpx.AsyncClient() as http:
        anonymous = await http.post(url, json={"type": "message", "text": "hi"})
        forged = await http.post(url, json={"type": "message"}, headers={"Authorization": "Bearer made-up"})
        headers = await _bearer(sim, http)
        sim.expire_tokens()
        expired = await http.post(url, json={"type": "message"}, headers=headers)
    assert [r.status_code for r in (anonymous, forged, expired)] == [401, 401, 401]
    assert anonymous.json()["error"]["code"] == "Unauthorized"
    assert sim.posted(CHANNEL) == []


async def test_send_reply_and_update_keep_a_history_of_edits(sim: TeamsSimulator) -> None:
    base = f"{sim.service_url}v3/conversations/{CHANNEL}/activities"
    async with httpx.AsyncClient() as http:
        headers = await _bearer(sim, http)
        sent = await http.post(base, json={"type": "message", "text": "v1"}, headers=headers)
        activity_id = sent.json()["id"]
        reply = await http.post(f"{base}/{activity_id}", json={"type": "message", "text": "re"}, headers=headers)
        updated = await http.put(f"{base}/{activity_id}", json={"type": "message", "text": "v2"}, headers=headers)
        missing = await http.put(f"{base}/nope", json={"type": "message", "text": "v3"}, headers=headers)
    assert (sent.status_code, reply.status_code, updated.status_code, missing.status_code) == (201, 201, 200, 404)
    first, second = sim.posted(CHANNEL)
    assert first.activity["text"] == "v2" and [h["text"] for h in first.history] == ["v1"] and first.edits == 1
    assert second.reply_to == activity_id
    assert [c.operation for c in sim.calls] == [
        "Conversations_SendToConversation",
        "Conversations_ReplyToActivity",
        "Conversations_UpdateActivity",
        "Conversations_UpdateActivity",
    ]
    assert sim.validation_errors == []


async def test_the_validator_records_bodies_that_break_the_swagger(sim: TeamsSimulator) -> None:
    async with httpx.AsyncClient() as http:
        headers = await _bearer(sim, http)
        await http.post(f"{sim.service_url}v3/conversations/{CHANNEL}/activities", json={"type": 7}, headers=headers)
    assert len(sim.validation_errors) == 1 and "Conversations_SendToConversation" in sim.validation_errors[0]


async def test_create_conversation_opens_a_1to1_chat_and_a_block_answers_403(sim: TeamsSimulator) -> None:
    params = {
        "bot": {"id": sim.bot_id},
        "members": [{"id": "29:alice"}],
        "channelData": {"tenant": {"id": sim.tenant_id}},
        "isGroup": False,
    }
    async with httpx.AsyncClient() as http:
        headers = await _bearer(sim, http)
        created = await http.post(f"{sim.service_url}v3/conversations", json=params, headers=headers)
        cid = created.json()["id"]
        sim.block(cid)
        blocked = await http.post(
            f"{sim.service_url}v3/conversations/{cid}/activities", json={"type": "message"}, headers=headers
        )
        no_tenant = await http.post(
            f"{sim.service_url}v3/conversations", json={**params, "channelData": {}}, headers=headers
        )
    assert created.status_code == 201 and cid == sim.personal_conversation_id("29:alice")
    assert blocked.status_code == 403 and blocked.json()["error"]["code"] == "MessageWritesBlocked"
    assert no_tenant.status_code == 400


async def test_members_are_found_by_mri_upn_or_email_and_paged(sim: TeamsSimulator) -> None:
    base = f"{sim.service_url}v3/conversations/{CHANNEL}"
    async with httpx.AsyncClient() as http:
        headers = await _bearer(sim, http)
        by_mri = await http.get(f"{base}/members/29:alice", headers=headers)
        by_email = await http.get(f"{base}/members/ALICE@example.com", headers=headers)
        by_upn = await http.get(f"{base}/members/bob@example.com", headers=headers)
        stranger = await http.get(f"{base}/members/29:carol", headers=headers)
        page1 = await http.get(f"{base}/pagedmembers", params={"pageSize": 1}, headers=headers)
        page2 = await http.get(
            f"{base}/pagedmembers",
            params={"pageSize": 1, "continuationToken": page1.json()["continuationToken"]},
            headers=headers,
        )
    assert by_mri.json()["email"] == "alice@example.com" == by_email.json()["email"]
    assert "email" not in by_upn.json() and by_upn.json()["userPrincipalName"] == "bob@example.com"
    assert stranger.status_code == 404
    assert [m["id"] for m in page1.json()["members"] + page2.json()["members"]] == ["29:alice", "29:bob"]
    assert "continuationToken" not in page2.json()


async def test_injected_faults_answer_in_order_then_clear(sim: TeamsSimulator) -> None:
    url = f"{sim.service_url}v3/conversations/{CHANNEL}/activities"
    sim.fail_next(429, retry_after=2)
    sim.fail_next(503)
    sim.fail_next(500, on="token")
    async with httpx.AsyncClient() as http:
        assert (await _token(sim, http)).status_code == 500
        headers = await _bearer(sim, http)
        limited = await http.post(url, json={"type": "message"}, headers=headers)
        down = await http.post(url, json={"type": "message"}, headers=headers)
        ok = await http.post(url, json={"type": "message"}, headers=headers)
        sim.delay_next(2)
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url, json={"type": "message"}, headers=headers, timeout=0.2)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
    assert down.status_code == 503 and ok.status_code == 201


async def test_the_client_posts_signed_activities(sim: TeamsSimulator) -> None:
    from aiohttp import web

    seen: list[tuple[str, dict[str, object]]] = []

    async def endpoint(request: web.Request) -> web.Response:
        seen.append((request.headers["Authorization"], await request.json()))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/api/messages", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = TeamsClient(sim, f"http://127.0.0.1:{port}/api/messages")
        alice = sim.members["29:alice"]
        posted = await client.post(client.channel_message(alice, CHANNEL, "access list"))
    finally:
        await runner.cleanup()
    assert posted.status == 202
    header, activity = seen[0]
    claims = jwt.decode(
        header.removeprefix("Bearer "),
        RSAAlgorithm.from_jwk(json.dumps(sim.key().jwk())),
        algorithms=["RS256"],
        audience=sim.app_id,
    )
    assert claims["serviceurl"] == activity["serviceUrl"] == sim.service_url
    assert activity["text"] == "<at>Ackgate</at> access list" and activity["entities"][0]["type"] == "mention"
