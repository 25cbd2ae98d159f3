"""``ackgate demo``: the real server on loopback, with built-in PagerDuty and Slack simulators,
playing a scripted scenario through real signed HTTP requests, printed as a transcript.

No accounts and no network are needed. It exits 0 when every scene ends as it should.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import tempfile
import textwrap
from datetime import timedelta
from importlib.resources import as_file, files
from pathlib import Path
from urllib.parse import unquote

import aiohttp
from pydantic import SecretStr

from bot.adapters.provisioners import NoopProvisioner
from bot.core.clock import FakeClock
from bot.runtime.simulators.oidc import OidcSimulator
from bot.runtime.simulators.stage import Person, Reply, Stage

# The example policy ships inside the package (a copy of examples/policy.yaml, kept identical by a
# test), so an installed wheel's demo runs from any directory.
EXAMPLE_POLICY = files("bot") / "example_policy.yaml"


class Transcript:
    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self._seen = 0
        self.failures: list[str] = []

    def scene(self, title: str) -> None:
        print(f"\n── {title} " + "─" * max(0, 70 - len(title)))

    def say(self, line: str) -> None:
        print(f"  {line}")

    def types(self, who: Person, text: str) -> None:
        print(f"\n  {who.name} types:  /access {text}")

    def shows(self, to: str, text: str) -> None:
        body = textwrap.indent(text.strip(), "      ")
        print(f"  Ackgate → {to}:\n{body}")

    def pagerduty_calls(self) -> None:
        calls = self.stage.pd.requests[self._seen :]
        self._seen = len(self.stage.pd.requests)
        for call in calls:
            query = f"?{unquote(call.raw_query)}" if call.raw_query else ""
            print(f"  Ackgate asked PagerDuty: {call.method} {call.path}{query}")

    def reply(self, who: Person, reply: Reply) -> None:
        if reply.ack.get("text") and reply.follow_up is not None:
            self.shows(f"{who.name} (at once)", str(reply.ack["text"]))
        self.pagerduty_calls()
        self.shows(who.name, reply.text)

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            self.failures.append(what)
            print(f"  !! expected: {what}")


async def run_demo(*, verbose: bool = False) -> int:
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL)
    if not EXAMPLE_POLICY.is_file():
        print(
            f"ackgate demo: the example policy {EXAMPLE_POLICY} is missing from the installed package; reinstall Ackgate."
        )
        return 2
    noop = NoopProvisioner()
    with tempfile.TemporaryDirectory(prefix="ackgate-demo-") as workdir, as_file(EXAMPLE_POLICY) as policy_file:
        stage = Stage(
            policy_file=policy_file,
            workdir=Path(workdir),
            clock=FakeClock(),
            provisioners={"iam": noop, "manual": noop, "noop": noop},
            teams=True,
        )
        async with stage:
            t = Transcript(stage)
            print("Ackgate demo: the real server on", stage.url, "with simulated PagerDuty, Slack and Teams.")
            print(f"Policy: the example policy (examples/policy.yaml); database: SQLite in {workdir}.")
            await _scenes(stage, t)
        t.failures += await _signin_scene(
            Path(workdir) / "signin", policy_file, {"iam": noop, "manual": noop, "noop": noop}
        )
    if t.failures:
        print(f"\nThe demo did not go as scripted ({len(t.failures)} problem(s)).")
        return 1
    print("\nEvery scene went as scripted.")
    return 0


async def _scenes(stage: Stage, t: Transcript) -> None:
    alice, bob, dana, mallory = (stage.person(n) for n in ("alice", "bob", "dana", "mallory"))
    database = stage.pd.add_service("Database", service_id="PABC123", escalation_policy_id="PESC456")
    bob_pd = next(u.id for u in stage.pd.users.values() if u.email == bob.email)
    alice_pd = next(u.id for u in stage.pd.users.values() if u.email == alice.email)
    stage.pd.add_oncall(bob_pd, escalation_policy_id="PESC456", level=1)

    t.scene("1. An acknowledged incident gives access at once, and it expires on its own")
    incident = stage.pd.add_incident(
        "Replication lag on pg-main",
        service=database,
        urgency="high",
        assigned_to=[alice_pd],
        acknowledged_by=[alice_pd],
    )
    t.say(f"PagerDuty: alice acknowledged incident #{incident.number} “Replication lag on pg-main” (Database, high).")
    t.types(alice, "prod-db 2h checking replication lag")
    reply = await stage.command(alice, "prod-db 2h checking replication lag")
    t.reply(alice, reply)
    t.expect("Access granted: prod-db" in reply.text, "alice is granted prod-db")
    t.say("\n  … two hours pass …")
    await stage.pass_time(2 * 3600)
    t.shows("alice (direct message)", await stage.wait_for_dm(alice, "expired"))

    t.scene("2. Delegated approval: whoever is on call approves a helper's request")
    t.say("PagerDuty: bob is on call (level 1) for escalation policy PESC456; dana is a DBA.")
    t.types(dana, f"prod-k8s 1h helping with INC-{incident.number}")
    reply = await stage.command(dana, f"prod-k8s 1h helping with INC-{incident.number}")
    t.reply(dana, reply)
    card = await stage.wait_for_dm(bob, "requests prod-k8s")
    t.shows("bob (direct message)", card)
    request_id = next(line.split()[1].rstrip(".") for line in card.splitlines() if line.startswith("Request r-"))
    t.say(f"\n  bob clicks Approve on request {request_id}")
    click = await stage.click(bob, "approve", request_id)
    t.shows("bob", click.text)
    t.shows("dana (direct message)", await stage.wait_for_dm(dana, "Access granted: prod-k8s"))
    t.shows("bob's approval message, updated in place", stage.dms(bob)[0])
    t.expect("Approved by bob@example.com" in stage.dms(bob)[0], "bob's card shows the decision")

    t.scene("3. No acknowledged incident, no access")
    t.types(mallory, "prod-db 2h")
    reply = await stage.command(mallory, "prod-db 2h")
    t.reply(mallory, reply)
    t.expect("was not granted" in reply.text, "mallory is refused")
    t.pagerduty_calls()

    await _authentication_scene(stage, t, alice, bob)
    await _teams_scene(stage, t, dana)


async def _teams_scene(stage: Stage, t: Transcript, dana: Person) -> None:
    t.scene("5. One deployment, two platforms: asked in Slack, approved in Teams")
    teams = stage.teams
    bob = teams.person("bob")
    stage.clock.advance(timedelta(minutes=5))  # later than his Slack click: Teams is where he is now
    await teams.install(bob)
    for _ in range(200):  # the installation is processed after Teams is answered
        if await stage.parts.store.address_book.by_user("teams", bob.user_id) is not None:
            break
        await asyncio.sleep(0.01)
    t.say("bob adds the Ackgate app in Microsoft Teams (signed activities from the Teams simulator).")
    t.types(dana, "prod-db 1h vacuuming the orders table")
    reply = await stage.command(dana, "prod-db 1h vacuuming the orders table")
    t.reply(dana, reply)
    card = await teams.wait_for_message(teams.chat_of(bob), "requests prod-db")
    t.shows("bob (Teams 1:1 chat, Adaptive Card)", teams.texts(teams.chat_of(bob))[-1])
    t.say("\n  bob clicks Approve on the card (an Action.Execute invoke)")
    posted, seen = await teams.click(bob, card, "Approve")
    t.shows(f"bob (the invoke's answer, HTTP {posted.status})", seen)
    t.shows("dana (Slack direct message)", await stage.wait_for_dm(dana, "Access granted: prod-db"))
    await teams.sim.wait_for(lambda: card.edits >= 1)
    now = teams.texts(teams.chat_of(bob))[-1]
    t.shows("bob's card, updated in place for everyone (PUT)", now)
    t.expect("Approved by bob@example.com" in now and "[Approve]" not in now, "bob's Teams card shows the decision")


async def _authentication_scene(stage: Stage, t: Transcript, alice: Person, bob: Person) -> None:
    t.scene("4. An authentication request reaches bob as a PagerDuty incident")
    t.types(alice, "auth @bob confirming your password reset")
    reply = await stage.command(alice, f"auth <@{bob.user_id}|bob> confirming your password reset")
    t.shows("alice", reply.text)
    for event in stage.events.events:
        payload = event["payload"]
        t.say(
            f"Ackgate sent PagerDuty Events: trigger “{payload['summary']}”, severity {payload['severity']}, "
            f"dedup_key {event['dedup_key']}, link “{event['links'][0]['text']}”"
        )
    dm = await stage.wait_for_dm(bob, "asks you to confirm your identity")
    t.shows("bob (direct message)", dm)
    link = stage.events.events[-1]["links"][0]["href"]
    status, page = await stage.browse(link)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    t.say(f"\n  bob opens the link: HTTP {status}, a page asking him to verify or deny")
    status, _ = await stage.browse(link, form={"decision": "verify", "csrf": csrf.group(1) if csrf else ""})
    t.say(f"bob clicks Verify: HTTP {status}")
    t.shows("alice's message, updated in place", await stage.wait_for_dm(alice, "Identity verified by bob"))
    replay, _ = await stage.browse(link, form={"decision": "deny", "csrf": csrf.group(1) if csrf else ""})
    t.say(f"the same link used again: HTTP {replay}, nothing changes")
    t.expect(replay == 410, "the link works only once")


async def _signin_scene(workdir: Path, policy_file: Path, provisioners: dict[str, NoopProvisioner]) -> list[str]:
    """Scene 6, on a second server configured with the OpenID Connect simulator: a forwarded link
    is refused to whoever it was forwarded to, and bob, signed in, verifies. Returns the failures."""
    await asyncio.to_thread(workdir.mkdir, exist_ok=True)
    clock = FakeClock()
    async with OidcSimulator(clock=clock) as idp:
        stage = Stage(
            policy_file=policy_file,
            workdir=workdir,
            clock=clock,
            provisioners=provisioners,
            settings={
                "oidc_issuer": idp.issuer,
                "oidc_client_id": idp.client_id,
                "oidc_client_secret": SecretStr(idp.client_secret),
            },
        )
        async with stage:
            t = Transcript(stage)
            t.scene("6. With a sign-in provider, a forwarded link works only for the person it is for")
            t.say(f"A second Ackgate, with ACKGATE_OIDC_ISSUER={idp.issuer} (the OpenID Connect simulator).")
            alice, bob = stage.person("alice"), stage.person("bob")
            reply = await stage.command(alice, f"auth <@{bob.user_id}|bob> confirming your password reset")
            t.shows("alice", reply.text)
            link = stage.events.events[-1]["links"][0]["href"]
            for who in ("mallory", "bob"):
                idp.sign_in_as(f"{who}@example.com")
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                    status, page, pressed = await _sign_in_and_verify(browser, link, origin=stage.url)
                shown = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.split("</h1>", 1)[-1])).split())
                t.say(
                    f"\n  {who} opens the link and presses {' then '.join(pressed)} (as {who}@example.com at the provider)"
                )
                t.say(f"HTTP {status}, the page says: {shown.removesuffix(' Ackgate')}")
                if who == "mallory":
                    t.expect(status == 403 and "you can't answer it" in shown, "mallory is refused")
            t.shows("alice's message, updated in place", await stage.wait_for_dm(alice, "Identity verified by bob"))
            return t.failures


async def _sign_in_and_verify(browser: aiohttp.ClientSession, link: str, *, origin: str) -> tuple[int, str, list[str]]:
    """A browser on ``link``: Sign in (following the provider's redirects), then Verify if offered."""
    csrf = re.compile(r'name="csrf" value="([^"]+)"')
    async with browser.get(link) as r:
        status, page = r.status, await r.text()
    pressed: list[str] = []
    for decision, label in (("signin", "Sign in"), ("verify", "Verify")):
        found = csrf.search(page)
        if status != 200 or found is None or f'value="{decision}"' not in page:
            break
        pressed.append(label)
        form = {"decision": decision, "csrf": found.group(1)}
        async with browser.post(link, data=form, headers={"Origin": origin}) as r:
            status, page = r.status, await r.text()
    return status, page, pressed
