"""A mixed workload driven through a :class:`~tests.reliability.harness.Cluster` while it is killed.

Requesters ask for automatic access, for approved access (approvers click Approve or Deny on the
cards they are sent) and for incident-bound access (revoked when PagerDuty resolves the incident);
holders revoke and extend; PagerDuty delivers each incident's webhooks, every delivery to two
replicas at the same instant. Meanwhile grants' expiries are moved close (or, while ``serve`` is
down, into the past) and ``serve`` is SIGKILLed, or SIGTERMed, at random points and restarted.

:func:`run` returns the figures of :mod:`tests.reliability.invariants`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from tests.reliability import invariants
from tests.reliability.harness import (
    APPROVED,
    APPROVERS,
    AUTO,
    INCIDENT,
    SERVICE_ID,
    Client,
    Cluster,
    Database,
    Fakes,
    Interaction,
    Person,
    PostgresDatabase,
    Server,
    SqliteDatabase,
    now_utc,
    poll,
    webhook_body,
)

# More than the expiry scheduler's idle interval (5 s), so serve has re-read the earliest expiry
# before it comes and meets it on time, as it would for a grant asked for that long.
RETIME_AHEAD = 7.0
_GRANT = re.compile(r"\bg-[a-z0-9]{8}\b")
_REQUEST = re.compile(r"Request (r-[a-z0-9]{8})")


@dataclass(frozen=True)
class Sizes:
    operations: int = 150
    concurrency: int = 6
    replicas: int = 1
    backend: str = "sqlite"  # "sqlite" | "postgres"
    stop_signal: str = "kill"  # "kill" (SIGKILL) | "term" (SIGTERM, a graceful stop)
    stops: int = 4  # how many times a replica is stopped (and started again)
    down_seconds: tuple[float, float] = (0.2, 1.5)
    incidents: int = 10
    requesters: int = 12
    retime_live: int = 4  # grants whose expiry is moved a few seconds ahead while serve runs
    retime_down: int = 2  # grants per stop whose expiry passes while serve is down
    short_grants: float = 0.0  # the share of automatic requests for 1 minute (they really expire)
    wait_answers: bool = True  # False: fire commands without waiting (a closed-loop backlog)
    webhook_copies: int = 2  # each delivery is sent to this many replicas (or times) at once
    settle_seconds: float = 20.0
    seed: int | None = None


@dataclass
class IncidentPlan:
    incident_id: str
    number: int
    title: str
    holder: Person
    grant_id: str | None = None
    resolved_sent: bool = False


@dataclass
class Run:
    """What was done, for the checks."""

    sizes: Sizes
    cluster: Cluster
    client: Client
    incidents: list[IncidentPlan] = field(default_factory=list)
    # grant id -> (its new expiry, when it was moved): a revoke is owed from the later of the two
    retimed: dict[str, tuple[float, float]] = field(default_factory=dict)
    seed: int | None = None
    started: float = 0.0
    load_seconds: float = 0.0
    settle_seconds: float = 0.0


class Workload:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.sizes = run.sizes
        self.cluster = run.cluster
        self.client = run.client
        if run.seed is None:  # a seed always, so a failing run can be replayed with --seed
            run.seed = random.SystemRandom().randrange(2**32)
        self.rng = random.Random(run.seed)
        self.requesters = [self.client.person(f"user{i:02d}") for i in range(run.sizes.requesters)]
        self.approvers = [self.client.person(a) for a in APPROVERS]
        self.active: dict[str, Person] = {}  # grants known active and not being acted on
        self.done = 0
        self._decided: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop_clicking = asyncio.Event()

    # --- the driver ---------------------------------------------------------------------------

    async def drive(self) -> None:
        plan = self._plan()
        queue: asyncio.Queue[str] = asyncio.Queue()
        for op in plan:
            queue.put_nowait(op)
        clicker = asyncio.create_task(self._clicker())
        chaos = asyncio.create_task(self._chaos(len(plan)))
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.sizes.concurrency)]
        try:
            await asyncio.gather(*workers)
            await chaos
            await self._drain_tasks()
        finally:
            self._stop_clicking.set()
            for task in (clicker, chaos, *workers):
                task.cancel()
            await asyncio.gather(clicker, chaos, *workers, return_exceptions=True)

    def _plan(self) -> list[str]:
        ops = ["incident"] * min(self.sizes.incidents, self.sizes.operations)
        kinds, weights = ["auto", "approval", "revoke", "extend", "list"], [45, 25, 15, 10, 5]
        if not self.sizes.wait_answers:
            kinds, weights = ["auto", "approval"], [70, 30]
        ops += self.rng.choices(kinds, weights, k=self.sizes.operations - len(ops))
        self.rng.shuffle(ops)
        return ops

    async def _worker(self, queue: asyncio.Queue[str]) -> None:
        while True:
            try:
                op = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await getattr(self, f"_op_{op}")()
            self.done += 1

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain_tasks(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- what people do -----------------------------------------------------------------------

    async def _type(self, who: Person, text: str, *, marker: str = "", attempts: int = 5) -> Interaction | None:
        """``who`` types ``/access text`` until Slack gets an acknowledgement (retyping after an error)."""
        for _ in range(attempts):
            server = self.client.pick()
            if server is None:
                await self.cluster.wait_any_up()
                continue
            interaction = await self.client.command(who, text, server=server, marker=marker)
            if interaction.acked:
                return interaction
            await asyncio.sleep(0.2)
        return None

    async def _answer(self, interaction: Interaction | None) -> str | None:
        if interaction is None or not self.sizes.wait_answers:
            return None
        return await self.client.wait_answer(interaction, within=4.0)

    def _marker(self) -> str:
        return f"mk{self.rng.randrange(16**8):08x}"

    async def _op_auto(self) -> None:
        who = self.rng.choice(self.requesters)
        marker = self._marker()
        duration = "1m" if self.rng.random() < self.sizes.short_grants else "30m"
        answer = await self._answer(await self._type(who, f"{AUTO} {duration} crash test {marker}", marker=marker))
        if answer and "Access granted" in answer and duration == "30m" and (found := _GRANT.search(answer)):
            self.active[found.group(0)] = who

    async def _op_approval(self) -> None:
        who = self.rng.choice(self.requesters)
        marker = self._marker()
        await self._answer(await self._type(who, f"{APPROVED} 30m needs approval {marker}", marker=marker))

    def _take_active(self) -> tuple[str, Person] | None:
        if not self.active:
            return None
        grant_id = self.rng.choice(sorted(self.active))
        return grant_id, self.active.pop(grant_id)

    async def _op_revoke(self) -> None:
        taken = self._take_active()
        if taken is None:
            return await self._op_auto()
        grant_id, holder = taken
        await self._answer(await self._type(holder, f"revoke {grant_id}"))

    async def _op_extend(self) -> None:
        taken = self._take_active()
        if taken is None:
            return await self._op_auto()
        grant_id, holder = taken
        await self._answer(await self._type(holder, f"extend {grant_id} 15m"))
        self.active[grant_id] = holder

    async def _op_list(self) -> None:
        await self._answer(await self._type(self.rng.choice(self.requesters), "list"))

    async def _op_incident(self) -> None:
        """An incident on the mirrored service, acknowledged by its responder, who asks for access
        bound to it; later PagerDuty resolves it. Each webhook goes to two replicas at once."""
        n = len(self.run.incidents) + 1
        holder = self.client.person(f"responder{n:03d}")
        title = f"Reliability incident {n:03d} {self._marker()}"
        sim = self.client.pd.add_incident(title, service=SERVICE_ID, acknowledged_by=[holder.pd_id])
        plan = IncidentPlan(sim.id, sim.number, title, holder)
        self.run.incidents.append(plan)
        t0 = now_utc()
        triggered = webhook_body(
            "incident.triggered", incident_id=sim.id, number=sim.number, title=title, status="triggered", at=t0
        )
        acked = webhook_body(
            "incident.acknowledged",
            incident_id=sim.id,
            number=sim.number,
            title=title,
            status="acknowledged",
            at=t0 + timedelta(seconds=1),
            agent=holder.name.title(),
        )
        await asyncio.gather(
            self._webhook(plan, "incident.triggered", triggered), self._webhook(plan, "incident.acknowledged", acked)
        )
        marker = self._marker()
        asked = await self._type(holder, f"{INCIDENT} 30m on call {marker}", marker=marker)
        answer = await self._answer(asked)
        if answer and (found := _GRANT.search(answer)):
            plan.grant_id = found.group(0)
        self._spawn(self._resolve_later(plan, asked))

    async def _resolve_later(self, plan: IncidentPlan, asked: Interaction | None) -> None:
        # The incident resolves after its responder was answered (granted), not while the grant is
        # still being decided: a grant racing its incident's resolve is not what is measured here.
        if asked is not None:
            await poll(lambda: self.client.answered(asked), within=10.0, every=0.1)
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        self.client.pd.resolve(plan.incident_id)
        body = webhook_body(
            "incident.resolved",
            incident_id=plan.incident_id,
            number=plan.number,
            title=plan.title,
            status="resolved",
            at=now_utc() + timedelta(seconds=2),
        )
        delivery = await self._webhook(plan, "incident.resolved", body)
        plan.resolved_sent = delivery

    async def _webhook(self, plan: IncidentPlan, event_type: str, body: bytes) -> bool:
        up = self.cluster.up() or self.cluster.servers
        if len(up) > 1:  # different replicas, when there are several
            targets = self.rng.sample(up, min(self.sizes.webhook_copies, len(up)))
        else:
            targets = up * self.sizes.webhook_copies
        delivery = await self.client.webhook(body, incident_id=plan.incident_id, event_type=event_type, servers=targets)
        return delivery.delivered

    async def _clicker(self) -> None:
        """Approvers read their DMs and click on the cards: mostly Approve, some Deny, a few left."""
        while not self._stop_clicking.is_set():
            for approver in self.approvers:
                for text in self.client.dms(approver):
                    found = _REQUEST.search(text)
                    if found is None or "[Approve]" not in text or found.group(1) in self._decided:
                        continue
                    request_id = found.group(1)
                    self._decided.add(request_id)
                    roll = self.rng.random()
                    if roll < 0.1:
                        continue  # left for later: genuinely awaiting approval
                    action = "deny" if roll < 0.25 else "approve"
                    clickers = self.approvers if roll > 0.9 else [approver]  # both at once, now and then
                    for clicker in clickers:
                        self._spawn(self._click(clicker, action, request_id))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_clicking.wait(), timeout=0.2)

    async def _click(self, who: Person, action: str, request_id: str) -> None:
        for _ in range(5):
            server = self.client.pick()
            if server is None:
                await self.cluster.wait_any_up()
                continue
            interaction = await self.client.click(who, action, request_id, server=server)
            if interaction.acked:
                await self._answer(interaction)
                return
            await asyncio.sleep(0.3)

    # --- chaos and the clock ------------------------------------------------------------------

    async def _chaos(self, total: int) -> None:
        stops, retimes = self.sizes.stops, self.sizes.retime_live
        events = [("stop", (i + 1) / (stops + 1)) for i in range(stops)]
        events += [("retime", (i + 0.5) / (retimes + 1)) for i in range(retimes)]
        events.sort(key=lambda e: e[1])
        for kind, share in events:
            await poll(lambda share=share: self.done >= share * total, within=3600, every=0.05)
            if kind == "retime":
                await self._retime(1, ahead=RETIME_AHEAD)
                continue
            await asyncio.sleep(self.rng.uniform(0.0, 0.4))
            up = self.cluster.up()
            if not up:
                continue
            victim = self.rng.choice(up)
            await self._stop(victim)
            await self._retime(self.sizes.retime_down, ahead=-self.rng.uniform(1.0, 20.0))
            await asyncio.sleep(self.rng.uniform(*self.sizes.down_seconds))
            await victim.start()

    async def _stop(self, victim: Server) -> None:
        if self.sizes.stop_signal == "term":
            self.cluster.terms += 1
            await victim.terminate(within=30)
        else:
            self.cluster.kills += 1
            await victim.kill()

    async def _retime(self, count: int, *, ahead: float) -> None:
        """Make ``count`` known-active grants expire ``ahead`` seconds from now (negative: already)."""
        chosen = [g for g in (self._take_active() for _ in range(count)) if g is not None]
        if not chosen:
            return
        moved = now_utc()
        when = moved + timedelta(seconds=ahead)
        await self.cluster.database.retime([g for g, _ in chosen], when)
        for grant_id, _ in chosen:
            self.run.retimed[grant_id] = (when.timestamp(), moved.timestamp())


async def run(sizes: Sizes, *, workdir: Path | None = None) -> invariants.Figures:
    """Start the fakes and the cluster, drive the workload, settle, check, stop. Cleans up after itself."""
    with tempfile.TemporaryDirectory(prefix="ackgate-reliability-") as tmp:
        where = workdir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        database: Database = PostgresDatabase() if sizes.backend == "postgres" else SqliteDatabase(where / "ackgate.db")
        fakes = Fakes()
        await fakes.start()
        await database.create()
        cluster = Cluster(fakes=fakes, database=database, workdir=where, replicas=sizes.replicas)
        client = Client(cluster)
        record = Run(sizes, cluster, client, seed=sizes.seed)
        try:
            await client.start()
            await cluster.start()
            record.started = time.time()
            await Workload(record).drive()
            record.load_seconds = time.time() - record.started
            for server in cluster.servers:  # whatever was stopped last is running again
                server.check_alive()
                if not server.up:
                    await server.start()
            settle_started = time.time()
            figures = await invariants.settle_and_check(record)
            record.settle_seconds = time.time() - settle_started
            figures.info["seed"] = record.seed
            figures.info["load seconds"] = round(record.load_seconds, 1)
            figures.info["settle seconds"] = round(record.settle_seconds, 1)
            return figures
        finally:
            await client.stop()  # first: an open keep-alive connection would hold up a graceful stop
            await cluster.stop()
            await fakes.stop()
            await database.drop()
