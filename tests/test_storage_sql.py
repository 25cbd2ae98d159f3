"""The statement shim: one text, each dialect's placeholders, slots and parameter forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from storage.sql import POSTGRES, SQLITE, Sql, bind

AT = datetime(2026, 11, 23, 12, 0, tzinfo=timezone(timedelta(hours=1)))


def test_a_name_used_twice_is_one_numbered_placeholder_in_each_dialect() -> None:
    sql = Sql("UPDATE t SET a = :now WHERE b = :owner AND c > :now RETURNING *")
    assert sql.names == ("now", "owner")
    assert sql.text(SQLITE) == "UPDATE t SET a = ?1 WHERE b = ?2 AND c > ?1 RETURNING *"
    assert sql.text(POSTGRES) == "UPDATE t SET a = $1 WHERE b = $2 AND c > $1 RETURNING *"


def test_lock_and_list_slots_are_each_dialects_own_sql() -> None:
    sql = Sql("SELECT * FROM t WHERE id {in_list:ids} AND s = :s{for_update}")
    assert sql.names == ("ids", "s")
    assert sql.text(SQLITE) == "SELECT * FROM t WHERE id IN (SELECT value FROM json_each(?1)) AND s = ?2"
    assert sql.text(POSTGRES) == "SELECT * FROM t WHERE id = ANY($1::text[]) AND s = $2 FOR UPDATE"


def test_values_are_given_in_placeholder_order_in_the_dialects_form() -> None:
    sql = Sql("SELECT * FROM t WHERE id {in_list:ids} AND at < :at")
    assert bind(SQLITE, sql, (), {"at": AT, "ids": ["a", "b"]})[1] == ('["a","b"]', "2026-11-23T11:00:00.000000+00:00")
    assert bind(POSTGRES, sql, (), {"at": AT, "ids": ["a", "b"]})[1] == (["a", "b"], AT.astimezone(UTC))
    assert bind(POSTGRES, sql, (["a"], AT), {})[1] == (["a"], AT.astimezone(UTC))


def test_a_naive_datetime_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        bind(SQLITE, Sql("SELECT :at"), (datetime(2026, 1, 1),), {})


@pytest.mark.parametrize(
    ("args", "named", "complaint"),
    [
        ((1,), {"b": 2}, "by name or by position"),
        ((1,), {}, "takes 2 parameters"),
        ((), {"a": 1}, r"missing \['b'\]"),
        ((), {"a": 1, "b": 2, "c": 3}, r"unknown \['c'\]"),
    ],
)
def test_parameters_that_do_not_fit_the_statement_are_a_type_error(
    args: tuple[object, ...], named: dict[str, object], complaint: str
) -> None:
    with pytest.raises(TypeError, match=complaint):
        bind(SQLITE, Sql("SELECT :a, :b"), args, named)


def test_a_statement_given_as_text_keeps_its_placeholders_and_positional_values() -> None:
    assert bind(POSTGRES, "SELECT $1", (AT,), {}) == ("SELECT $1", (AT.astimezone(UTC),))
    with pytest.raises(TypeError, match="positional"):
        bind(POSTGRES, "SELECT $1", (), {"a": 1})
