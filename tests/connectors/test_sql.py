"""apps.connectors.sql against real databases: the machine's MariaDB and a PostgreSQL database of its own.

Placeholders and classification are checked on text; everything else runs statements for real, in both
dialects, through the same functions the `sql.query` step and the connection test use."""

from __future__ import annotations

from typing import Any

import pytest

from apps.connectors.sql import (
    SqlError,
    json_safe,
    sql_connect,
    sql_execute,
    sql_session,
    sql_test,
    statement_classify,
    statement_placeholders,
    statement_prepare,
)
from tests.support import erp as erp_support
from tests.support.erp import ErpDatabase

# The ERP fixtures (both databases, reset before each test that asks for `erp`).
erp, erp_mariadb, erp_postgresql = erp_support.erp, erp_support.erp_mariadb, erp_support.erp_postgresql

DIALECTS = ["postgresql", "mysql"]


def run(
    database: ErpDatabase,
    statement: str,
    parameters: dict[str, Any] | None = None,
    *,
    read_only: bool = True,
    row_cap: int = 100,
    timeout: float = 10,
    commit: bool = False,
) -> Any:
    with sql_session(database.config, database.secrets, read_only=read_only, timeout_seconds=timeout) as session:
        result = sql_execute(session, statement_prepare(statement, database.dialect), parameters or {}, row_cap=row_cap)
        if commit:
            session.commit()
        return result


# --- text ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_placeholders_are_words_after_a_colon_outside_strings_and_comments(dialect: str) -> None:
    statement = (
        "SELECT ':in_string' AS a, 10 % 3 AS b FROM t -- :in_comment\n"
        "WHERE c = :vendor /* :also_comment */ AND d LIKE '50%' AND e = :vendor AND f = :date"
    )
    assert statement_placeholders(statement, dialect) == ["vendor", "date"]
    prepared = statement_prepare(statement, dialect)
    assert prepared.names == ("vendor", "date")
    assert "%(vendor)s" in prepared.text and ":vendor" not in prepared.text.split("--")[1]
    assert "':in_string'" in prepared.text and "'50%%'" in prepared.text and "10 %% 3" in prepared.text


def test_a_postgresql_cast_is_not_a_placeholder() -> None:
    assert statement_placeholders("SELECT amount::numeric(12,2) FROM t WHERE id = :id", "postgresql") == ["id"]


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        ("SELECT * FROM invoices WHERE invoice_number = :n", "read"),
        ("SELECT a FROM t UNION SELECT b FROM s", "read"),
        ("INSERT INTO postings (invoice_number) VALUES (:n)", "write"),
        ("UPDATE invoices SET net_amount = :a WHERE invoice_number = :n", "write"),
        ("DELETE FROM postings WHERE id = :id", "write"),
        ("SELECT * FROM invoices FOR UPDATE", "write"),
        ("SELECT * INTO copy_of FROM invoices", "write"),
        ("WITH gone AS (DELETE FROM postings RETURNING *) SELECT * FROM gone", "write"),
        ("CALL post_invoice(:n)", "write"),
    ],
)
def test_classification(statement: str, kind: str) -> None:
    result = statement_classify(statement, "postgresql")
    assert (result.kind, result.refusal) == (kind, None)


@pytest.mark.parametrize(
    ("statement", "words"),
    [
        ("DROP TABLE invoices", "DDL"),
        ("CREATE TABLE x (a int)", "DDL"),
        ("ALTER TABLE invoices ADD COLUMN x int", "DDL"),
        ("TRUNCATE invoices", "TRUNCATE"),
        ("GRANT SELECT ON invoices TO someone", "DDL"),
        ("SELECT 1; DROP TABLE invoices", "2 statements"),
        ("SET search_path = evil", "session"),
        ("COMMIT", "transaction"),
    ],
)
def test_refusals_say_why(statement: str, words: str) -> None:
    refusal = statement_classify(statement, "postgresql").refusal
    assert refusal is not None and words in refusal


def test_unparsable_sql_is_a_clear_error() -> None:
    with pytest.raises(SqlError, match="does not parse as mysql SQL"):
        statement_classify("SELEC * FROM invoices", "mysql")


def test_json_safe_values() -> None:
    import datetime
    import decimal
    import uuid

    assert json_safe(decimal.Decimal("12.10")) == "12.10"
    assert json_safe(datetime.date(2026, 3, 20)) == "2026-03-20"
    assert json_safe(datetime.datetime(2026, 3, 20, 8, 30, tzinfo=datetime.UTC)) == "2026-03-20T08:30:00+00:00"
    assert json_safe(b"\x00\x01") == "AAE="
    assert json_safe(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert json_safe({"nested": [decimal.Decimal("1.5"), float("nan")]}) == {"nested": ["1.5", "nan"]}


# --- real databases ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_read_with_parameters_in_both_dialects(erp: list[ErpDatabase]) -> None:
    for database in erp:
        result = run(
            database,
            "SELECT po_number, net_amount, ordered_on FROM purchase_orders WHERE vendor_id = :vendor "
            "AND net_amount >= :minimum ORDER BY po_number",
            {"vendor": "V-1001", "minimum": 1000},
        )
        assert result.columns == ["po_number", "net_amount", "ordered_on"], database.dialect
        assert result.rows == [{"po_number": "PO-7781", "net_amount": "1240.00", "ordered_on": "2026-03-02"}]
        assert (result.row_count, result.truncated) == (1, False)


@pytest.mark.django_db
def test_an_injection_attempt_stays_a_value(erp: list[ErpDatabase]) -> None:
    for database in erp:
        hostile = "'; DROP TABLE invoices; --"
        result = run(database, "SELECT count(*) AS n FROM invoices WHERE invoice_number = :number", {"number": hostile})
        assert result.rows == [{"n": 0}], database.dialect
        assert database.query("SELECT count(*) FROM invoices") == [(3,)], database.dialect
        # Stored and read back byte for byte.
        run(
            database,
            "INSERT INTO postings (invoice_number, amount, note) VALUES (:n, 1, :note)",
            {"n": "INV-3021", "note": hostile},
            read_only=False,
            commit=True,
        )
        assert database.query("SELECT note FROM postings") == [(hostile,)], database.dialect


@pytest.mark.django_db
def test_a_write_in_a_read_only_transaction_is_refused_by_the_server(erp: list[ErpDatabase]) -> None:
    for database in erp:
        with pytest.raises(SqlError, match="read-only transaction") as refused:
            run(database, "INSERT INTO postings (invoice_number, amount) VALUES ('INV-3021', 1)", commit=True)
        assert not refused.value.retryable, database.dialect
        assert database.query("SELECT count(*) FROM postings") == [(0,)], database.dialect


@pytest.mark.django_db
def test_the_row_cap_fetches_one_more_row_than_it_returns(erp: list[ErpDatabase]) -> None:
    for database in erp:
        capped = run(database, "SELECT invoice_number FROM invoices ORDER BY invoice_number", row_cap=2)
        assert [row["invoice_number"] for row in capped.rows] == ["INV-3021", "INV-5540"], database.dialect
        assert (capped.row_count, capped.truncated) == (2, True)
        exact = run(database, "SELECT invoice_number FROM invoices", row_cap=3)
        assert (exact.row_count, exact.truncated) == (3, False)


@pytest.mark.django_db
@pytest.mark.parametrize(("dialect", "sleep"), [("postgresql", "SELECT pg_sleep(5)"), ("mysql", "SELECT SLEEP(5)")])
def test_a_statement_over_its_time_limit_is_stopped_and_retryable(
    erp: list[ErpDatabase], dialect: str, sleep: str
) -> None:
    import time

    [database] = [database for database in erp if database.dialect == dialect]
    started = time.monotonic()
    if dialect == "mysql":
        # MariaDB ends SLEEP() at max_statement_time by returning 1 rather than raising; a query that works
        # longer than its limit raises. Both stop within the limit.
        try:
            result = run(database, sleep, timeout=1)
        except SqlError as error:
            assert error.retryable and "limit of 1 s" in error.message
        else:
            assert result.rows == [{"SLEEP(5)": 1}]
        with pytest.raises(SqlError, match="limit of 1 s") as stopped:
            run(
                database,
                "SELECT count(*) AS n FROM invoices a, invoices b, invoices c, invoices d, invoices e, invoices f, "
                "invoices g, invoices h, invoices i, invoices j, invoices k, invoices l, invoices m, invoices n "
                "WHERE SLEEP(0.5) = 0",
                timeout=1,
            )
    else:
        with pytest.raises(SqlError, match="limit of 1 s") as stopped:
            run(database, sleep, timeout=1)
    assert stopped.value.retryable
    assert time.monotonic() - started < 4.5


@pytest.mark.django_db
def test_a_duplicate_key_is_reported_as_such(erp: list[ErpDatabase]) -> None:
    for database in erp:
        insert = "INSERT INTO postings (invoice_number, amount, idempotency_key) VALUES ('INV-3021', 1, :key)"
        run(database, insert, {"key": "k-1"}, read_only=False, commit=True)
        with pytest.raises(SqlError) as duplicate:
            run(database, insert, {"key": "k-1"}, read_only=False, commit=True)
        assert duplicate.value.unique_violation and "k-1" in duplicate.value.message, database.dialect
        assert database.query("SELECT count(*) FROM postings") == [(1,)]


@pytest.mark.django_db
def test_syntax_and_permission_errors_carry_the_servers_message_and_are_not_retryable(
    erp: list[ErpDatabase],
) -> None:
    for database in erp:
        with pytest.raises(SqlError) as missing:
            run(database, "SELECT nope FROM invoices")
        assert "nope" in missing.value.message and not missing.value.retryable, database.dialect


@pytest.mark.django_db
def test_a_bad_password_is_refused_without_showing_it(erp: list[ErpDatabase]) -> None:
    [database] = [database for database in erp if database.dialect == "mysql"]
    secret = "canary-Password-7731"
    with pytest.raises(SqlError) as refused:
        sql_connect(database.config, {"password": secret}, read_only=True, timeout_seconds=5)
    assert "Access denied" in refused.value.message
    assert secret not in refused.value.message and not refused.value.retryable


@pytest.mark.django_db
def test_loopback_is_refused_unless_allowlisted(erp: list[ErpDatabase], settings: Any) -> None:
    settings.AIOS_HTTP_ALLOWLIST = []
    for database in erp:
        with pytest.raises(SqlError, match="a loopback address; connections there are not allowed"):
            sql_connect(database.config, database.secrets, read_only=True, timeout_seconds=5)


@pytest.mark.django_db
def test_the_connection_test_names_the_server(erp: list[ErpDatabase]) -> None:
    mariadb, postgresql = erp
    assert sql_test(mariadb.config, mariadb.secrets).startswith("MariaDB 10.")
    assert sql_test(postgresql.config, postgresql.secrets).startswith("PostgreSQL ")


@pytest.mark.django_db
def test_an_unreachable_server_is_a_retryable_error(erp: list[ErpDatabase]) -> None:
    from tests.support.processes import free_port

    for database in erp:
        config = {**database.config, "port": free_port()}
        with pytest.raises(SqlError, match="Could not connect") as unreachable:
            sql_connect(config, database.secrets, read_only=True, timeout_seconds=5)
        assert unreachable.value.retryable, database.dialect


@pytest.mark.django_db
def test_a_read_cannot_run_a_function_that_writes(erp: list[ErpDatabase]) -> None:
    for database in erp:
        with pytest.raises(SqlError, match="read-only transaction") as refused:
            run(database, "SELECT record_lookup(:n) AS done", {"n": "INV-3021"})
        assert not refused.value.retryable, database.dialect
        assert database.query("SELECT count(*) FROM postings") == [(0,)], database.dialect
        # The same call in a read-write transaction does write: the refusal above is the transaction's.
        run(database, "SELECT record_lookup(:n) AS done", {"n": "INV-3021"}, read_only=False, commit=True)
        assert database.query("SELECT count(*) FROM postings") == [(1,)], database.dialect


@pytest.mark.django_db
@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_the_driver_refuses_two_statements_in_one_string(erp: list[ErpDatabase], read_only: bool) -> None:
    """The parser refuses `a; b` at publish and run time; the drivers are the second line. PostgreSQL gets every
    statement over the extended protocol (one statement per Parse, parameters or not) and MySQL/MariaDB sessions
    are opened without CLIENT.MULTI_STATEMENTS, so the second statement never runs, even unparsed."""
    for database in erp:
        database.query("INSERT INTO postings (invoice_number, amount) VALUES ('INV-3021', 1)")
        for statement in ("SELECT 1; DELETE FROM postings", "SELECT 1 AS n; DELETE FROM postings WHERE amount = :a"):
            parameters = {"a": 1} if ":a" in statement else {}
            with pytest.raises(SqlError) as refused:
                run(database, statement, parameters, read_only=read_only, commit=True)
            assert not refused.value.retryable, (database.dialect, statement)
            assert database.query("SELECT count(*) FROM postings") == [(1,)], (database.dialect, statement)
        print(f"{database.dialect}: {refused.value.message}")
