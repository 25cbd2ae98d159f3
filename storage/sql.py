"""The SQL shim: every statement is written once, as an :class:`Sql` with ``:name`` parameters, and
a :class:`Dialect` says the little that differs between SQLite and PostgreSQL.

What differs, all of it:

======================  ==========================================  ===================================
                        SQLite                                      PostgreSQL
======================  ==========================================  ===================================
placeholders            ``?1``, ``?2`` (numbered: one value can     ``$1``, ``$2``
                        stand in several places)
datetimes               fixed-width UTC ISO text                    ``timestamptz`` (UTC ``datetime``)
a list parameter        JSON text, read by ``json_each``            an array, ``= ANY(...)``
``{for_update}``        nothing: a write runs in ``BEGIN            ``FOR UPDATE``: the row lock keeps
                        IMMEDIATE``, which holds the write lock     a rival from changing the row
``{skip_locked}``       nothing, for the same reason                ``FOR UPDATE SKIP LOCKED``
======================  ==========================================  ===================================

``ON CONFLICT ... DO NOTHING / DO UPDATE ... WHERE``, ``RETURNING`` and ``excluded`` are the same in
both (SQLite 3.35 and later), so a compare-and-set is one ``UPDATE ... WHERE <expected> RETURNING``
and an insert-if-absent one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` in each.

A backend implements :class:`Database` (how a connection is held, and what a transaction is), and
the role classes in :mod:`storage.roles`, :mod:`storage.deliveries` and :mod:`storage.address_book`
run their statements through it. A statement may also be a plain string already written in the
dialect's placeholders (``dialect.mark(1)`` is the first), taking positional values.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from bot.core.errors import StorageError
from storage.codec import Codec, Row, dump_json, from_iso, iso, utc

Mark = Callable[[int], str]
ConnT = TypeVar("ConnT")

_PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
_SLOT = re.compile(r"\{([a-z_]+)\}")
_IN_LIST = re.compile(r"\{in_list:([a-z_]+)\}")


def _pg_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Dialect:
    """What one database does differently; see the table in this module's docstring."""

    name: str
    mark: Mark
    dump_time: Callable[[datetime], object]
    load_time: Callable[[Any], datetime]
    dump_list: Callable[[list[Any]], object]
    slots: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def codec(self) -> Codec:
        return Codec(dump_time=self.dump_time, load_time=self.load_time)

    def value(self, value: object) -> object:
        """A parameter as the driver takes it: datetimes and lists in this dialect's form."""
        if isinstance(value, datetime):
            return self.dump_time(value)
        if isinstance(value, list):
            return self.dump_list(value)
        return value


SQLITE = Dialect(
    name="sqlite",
    mark=lambda n: f"?{n}",
    dump_time=iso,
    load_time=from_iso,
    dump_list=dump_json,
    slots={
        "in_list": "IN (SELECT value FROM json_each({}))",
        "for_update": "",
        "skip_locked": "",
        # Without ANALYZE statistics SQLite's planner reads the grants by status, which at 100,000
        # active grants is every one of them; the sweeps of storage.sweeps name their index.
        "grants_by_id": " INDEXED BY sqlite_autoindex_grants_1",
        "grants_by_incident": " INDEXED BY grants_active_by_incident",
    },
)

POSTGRES = Dialect(
    name="postgres",
    mark=lambda n: f"${n}",
    dump_time=utc,
    load_time=_pg_time,
    dump_list=lambda values: values,
    slots={
        "in_list": "= ANY({}::text[])",
        "for_update": " FOR UPDATE",
        "skip_locked": " FOR UPDATE SKIP LOCKED",
        "grants_by_id": "",
        "grants_by_incident": "",
    },
)


class Sql:
    """One statement, written once. ``:name`` is a parameter (the same name may come back);
    ``{for_update}`` and ``{skip_locked}`` are the dialect's lock clauses, and ``{in_list:name}``
    is ``IN`` the list parameter ``name``."""

    def __init__(self, text: str) -> None:
        self.source = " ".join(text.split())
        plain = _IN_LIST.sub(r":\1", self.source)
        self.names: tuple[str, ...] = tuple(dict.fromkeys(_PARAMETER.findall(plain)))
        self._texts: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Sql({self.source!r})"

    def text(self, dialect: Dialect) -> str:
        """The statement in ``dialect``'s own SQL and placeholders."""
        done = self._texts.get(dialect.name)
        if done is None:
            slotted = re.sub(
                r"\{in_list:([a-z_]+)\}", lambda m: dialect.slots["in_list"].format(f":{m[1]}"), self.source
            )
            slotted = _SLOT.sub(lambda m: dialect.slots[m[1]], slotted)
            number = {name: n for n, name in enumerate(self.names, start=1)}
            done = self._texts[dialect.name] = _PARAMETER.sub(lambda m: dialect.mark(number[m[1]]), slotted)
        return done

    def values(self, dialect: Dialect, args: Sequence[object], named: Mapping[str, object]) -> tuple[object, ...]:
        """The parameters in placeholder order: given by name, or all by position (in first-use order)."""
        if args and named:
            raise TypeError(f"{self!r} takes its parameters by name or by position, not both.")
        if not named:
            if len(args) != len(self.names):
                raise TypeError(
                    f"{self!r} takes {len(self.names)} parameters ({', '.join(self.names)}), got {len(args)}."
                )
            return tuple(dialect.value(v) for v in args)
        missing = [n for n in self.names if n not in named]
        extra = [n for n in named if n not in self.names]
        if missing or extra:
            raise TypeError(f"{self!r} takes the parameters {self.names}; missing {missing}, unknown {extra}.")
        return tuple(dialect.value(named[n]) for n in self.names)

    @classmethod
    def insert(cls, table: str, columns: Sequence[str], *, suffix: str = "") -> Sql:
        """An INSERT of one row of ``columns``, each taking the parameter of its own name."""
        values = ", ".join(f":{c}" for c in columns)
        return cls(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) {suffix}")  # noqa: S608 - constant names


Statement = Sql | str


def bind(
    dialect: Dialect, sql: Statement, args: Sequence[object], named: Mapping[str, object]
) -> tuple[str, tuple[object, ...]]:
    """The driver's text and values for ``sql`` with these parameters."""
    if isinstance(sql, str):
        if named:
            raise TypeError("A statement given as text takes positional parameters only.")
        return sql, tuple(dialect.value(v) for v in args)
    return sql.text(dialect), sql.values(dialect, args, named)


class Duplicate(StorageError):
    """An insert met a row with the same unique key; ``key`` names it as the database does
    (SQLite's message names the column, PostgreSQL's the constraint)."""

    def __init__(self, doing: str, key: str) -> None:
        super().__init__(f"Could not {doing}: a row with that key is already stored.")
        self.key = key


class Session(Protocol):
    """Statements on one connection, inside whatever the backend opened it for."""

    async def rows(self, sql: Statement, /, *args: object, **named: object) -> list[Row]:
        """Run ``sql`` and return its rows (a ``RETURNING`` write returns what it changed)."""
        ...

    async def row(self, sql: Statement, /, *args: object, **named: object) -> Row | None:
        """The first row ``sql`` returns, or None."""
        ...

    async def execute(self, sql: Statement, /, *args: object, **named: object) -> None: ...

    async def execute_many(self, sql: Statement, rows: Iterable[Sequence[object]], /) -> None:
        """Run ``sql`` once per positional row; no rows, no call."""
        ...

    async def execute_script(self, script: str, /) -> None:
        """Run several statements given as one text (a migration), without parameters."""
        ...


class DriverSession(abc.ABC, Generic[ConnT]):
    """A :class:`Session` over one driver connection: binds each statement in :attr:`dialect`, and
    turns a unique violation into :class:`Duplicate`. A backend supplies the driver's calls."""

    dialect: ClassVar[Dialect]

    def __init__(self, conn: ConnT, doing: str) -> None:
        self._conn = conn
        self._doing = doing

    @classmethod
    @asynccontextmanager
    async def over(cls, opened: AbstractAsyncContextManager[ConnT], doing: str) -> AsyncIterator[Self]:
        """A session on the connection ``opened`` yields, for as long as it is held."""
        async with opened as conn:
            yield cls(conn, doing)

    @contextmanager
    def _unique(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            key = self._unique_key(exc)
            if key is None:
                raise
            raise Duplicate(self._doing, key) from exc

    async def rows(self, sql: Statement, /, *args: object, **named: object) -> list[Row]:
        text, values = bind(self.dialect, sql, args, named)
        with self._unique():
            return await self._fetch(text, values)

    async def row(self, sql: Statement, /, *args: object, **named: object) -> Row | None:
        rows = await self.rows(sql, *args, **named)
        return rows[0] if rows else None

    async def execute(self, sql: Statement, /, *args: object, **named: object) -> None:
        text, values = bind(self.dialect, sql, args, named)
        with self._unique():
            await self._run(text, values)

    async def execute_many(self, sql: Statement, rows: Iterable[Sequence[object]], /) -> None:
        bound = [bind(self.dialect, sql, row, {}) for row in rows]
        if bound:
            with self._unique():
                await self._run_many(bound[0][0], [values for _, values in bound])

    @abc.abstractmethod
    async def execute_script(self, script: str, /) -> None: ...

    @abc.abstractmethod
    async def _fetch(self, text: str, values: tuple[object, ...]) -> list[Row]: ...

    @abc.abstractmethod
    async def _run(self, text: str, values: tuple[object, ...]) -> None: ...

    @abc.abstractmethod
    async def _run_many(self, text: str, values: list[tuple[object, ...]]) -> None: ...

    @abc.abstractmethod
    def _unique_key(self, exc: Exception) -> str | None:
        """The key ``exc`` found taken, when it is a unique violation; None for any other error."""


class Database(Protocol):
    """A backend's connection holder, as the role classes use it. ``doing`` completes the sentence
    "Could not …" of the :class:`~bot.core.errors.StorageError` raised when the driver fails."""

    dialect: Dialect

    def read(self, doing: str) -> AbstractAsyncContextManager[Session]:
        """A connection for reading."""
        ...

    def write(self, doing: str, *, urgent: bool = False) -> AbstractAsyncContextManager[Session]:
        """A connection for one writing statement, atomic on its own; ``urgent`` goes ahead of
        the writes waiting for a shared connection (an acknowledgement waits for it)."""
        ...

    def transaction(self, doing: str) -> AbstractAsyncContextManager[Session]:
        """A connection in one transaction: everything commits together or, on any exception, nothing."""
        ...
