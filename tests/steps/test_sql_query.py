"""`sql.query`: publish-time checks, and execution through real connections to the machine's MariaDB and a
PostgreSQL database of its own (tests/support/erp.py)."""

from __future__ import annotations

from typing import Any

import pytest

from apps.steps.base import StepContext, StepError, Uses
from apps.steps.library.sql_query import SqlQuery, SqlQueryConfig
from apps.steps.registry import step_config_errors, step_type_get
from tests.support import erp as erp_support
from tests.support.erp import ErpDatabase

erp, erp_mariadb, erp_postgresql = erp_support.erp, erp_support.erp_mariadb, erp_support.erp_postgresql

LOOKUP = "SELECT po_number, net_amount, status FROM purchase_orders WHERE po_number = :po"
POST = "INSERT INTO postings (invoice_number, amount, idempotency_key) VALUES (:invoice, :amount, :idempotency_key)"


def errors(**config: Any) -> list[str]:
    return step_config_errors("sql.query", {"connection": "erp", **config})


# --- publish-time checks -------------------------------------------------------------------------------------


def test_a_parameterised_read_is_valid() -> None:
    assert errors(statement=LOOKUP, parameters={"po": "input.po_number"}) == []


def test_the_builder_form_names_its_widgets() -> None:
    schema = step_type_get("sql.query").config_schema()
    assert schema["properties"]["connection"]["x-widget"] == "connection-sql"
    assert schema["properties"]["parameters"]["x-widget"] == "cel"
    assert all(spec.get("description") for spec in schema["properties"].values())
    assert step_type_get("sql.query").category == "Connectors" and step_type_get("sql.query").queue == "connectors"


def test_uses_names_the_connection() -> None:
    config = SqlQueryConfig(connection="erp", statement=LOOKUP, parameters={"po": "input.po"})
    assert SqlQuery.uses(config) == [Uses("connection", "erp", kind="sql", field="connection")]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"statement": "SELECT * FROM invoices WHERE invoice_number = '{{ input.number }}'"},
            "templates ({{ … }}, {% … %}) would splice text into the SQL",
        ),
        ({"statement": "SELECT 1; DELETE FROM invoices"}, "it holds 2 statements"),
        ({"statement": LOOKUP}, "the placeholder :po has no parameter; add one named po"),
        (
            {"statement": "SELECT 1 AS one", "parameters": {"po": "input.po"}},
            "parameters.po: not used in the statement",
        ),
        (
            {"statement": "DELETE FROM invoices WHERE invoice_number = :n", "parameters": {"n": "input.n"}},
            "this statement changes data, but the step is in read mode",
        ),
        ({"statement": "SELECT * FROM invoices FOR UPDATE"}, "a locking clause"),
        ({"statement": "SELECT * INTO archive FROM invoices"}, "SELECT … INTO"),
        ({"statement": "WITH gone AS (DELETE FROM postings RETURNING *) SELECT * FROM gone"}, "changes data"),
        ({"statement": "DROP TABLE invoices", "mode": "write"}, "DDL is not allowed"),
        ({"statement": "ALTER TABLE invoices ADD COLUMN x INT", "mode": "write"}, "DDL is not allowed"),
        ({"statement": "SELEC * FROM invoices"}, "statement: The statement does not parse"),
        (
            {"statement": "UPDATE invoices SET net_amount = 0", "mode": "write"},
            "a write that is tried again after an unknown outcome could be applied twice",
        ),
        (
            {"statement": POST, "mode": "write", "parameters": {"invoice": "1", "amount": "1", "idempotency_key": "1"}},
            "parameters.idempotency_key: reserved",
        ),
        ({"statement": "SELECT :x AS x", "parameters": {"x": "input.("}}, "parameters.x: the expression does not"),
    ],
)
def test_publish_refusals_say_what_to_do(config: dict[str, Any], expected: str) -> None:
    problems = errors(**config)
    assert any(expected in problem for problem in problems), problems


def test_a_write_with_an_idempotency_key_or_at_most_once_is_valid() -> None:
    assert errors(statement=POST, mode="write", parameters={"invoice": "input.n", "amount": "input.a"}) == []
    assert (
        errors(
            statement="UPDATE invoices SET net_amount = :a WHERE invoice_number = :n",
            mode="write",
            delivery="at_most_once",
            parameters={"a": "input.a", "n": "input.n"},
        )
        == []
    )


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        (
            "UPDATE accounts SET balance = balance - :amount WHERE id = :id AND :idempotency_key IS NOT NULL",
            "UPDATE is not an INSERT",
        ),
        ("UPDATE accounts SET last_key = :idempotency_key, balance = balance - :amount WHERE id = :id", "not an"),
        ("DELETE FROM accounts WHERE id = :id AND note <> :idempotency_key AND :amount > 0", "DELETE is not an"),
        (
            "INSERT INTO postings (invoice_number, amount, note) VALUES (:id, :amount, 'x') "
            "ON CONFLICT (invoice_number) DO UPDATE SET note = :idempotency_key",
            "an upsert",
        ),
        (
            "INSERT INTO postings (invoice_number, amount, idempotency_key) VALUES (:id, :amount, :idempotency_key) "
            "ON DUPLICATE KEY UPDATE amount = amount + 1",
            "an upsert",
        ),
        (
            "INSERT IGNORE INTO postings (invoice_number, amount, idempotency_key) VALUES (:id, :amount, "
            ":idempotency_key)",
            "INSERT IGNORE",
        ),
        (
            "INSERT INTO postings (invoice_number, amount, note) VALUES (:id, :amount, 'x') "
            "RETURNING :idempotency_key AS key",
            "do not include :idempotency_key",
        ),
        (
            "INSERT INTO postings (invoice_number, amount, idempotency_key) VALUES (:id, :amount, :idempotency_key), "
            "(:id, :amount, :idempotency_key)",
            "several rows",
        ),
        (
            "WITH debit AS (UPDATE accounts SET balance = balance - :amount WHERE id = :id RETURNING id) "
            "INSERT INTO postings (invoice_number, amount, idempotency_key) SELECT id, 1, :idempotency_key FROM debit",
            "also contains UPDATE",
        ),
    ],
)
def test_an_at_least_once_write_must_be_an_insert_storing_the_key(statement: str, reason: str) -> None:
    """Mentioning :idempotency_key is not enough: a repeat is only recognised when the repeated INSERT collides
    with the first attempt's row on that key; anything else would apply a retried write twice."""
    parameters = {"id": "input.id", "amount": "input.amount"}
    problems = errors(statement=statement, mode="write", parameters=parameters)
    assert any("could be applied twice" in problem and reason in problem for problem in problems), problems
    assert any("set delivery to at_most_once" in problem for problem in problems), problems
    assert errors(statement=statement, mode="write", delivery="at_most_once", parameters=parameters) == []


@pytest.mark.parametrize(
    "statement",
    [
        POST,
        POST + " ON CONFLICT DO NOTHING",
        POST + " RETURNING id",
        "INSERT INTO postings (invoice_number, amount, idempotency_key) VALUES (:invoice, :amount, "
        "CAST(:idempotency_key AS VARCHAR(64)))",
        "INSERT INTO postings (invoice_number, amount, idempotency_key) SELECT invoice_number, :amount, "
        ":idempotency_key FROM invoices WHERE invoice_number = :invoice",
    ],
)
def test_an_insert_storing_the_key_may_be_retried(statement: str) -> None:
    assert errors(statement=statement, mode="write", parameters={"invoice": "input.n", "amount": "input.a"}) == []


# --- execution -----------------------------------------------------------------------------------------------


@pytest.fixture
def sql_workflow(analyst: Any, team: Any, erp: list[ErpDatabase]) -> dict[str, Any]:
    """A connection per ERP database, owned by the analyst's team, and a workflow of that team."""
    from apps.connectors.services import connection_create
    from apps.workflows.services import workflow_create

    names = {}
    for database in erp:
        name = f"erp-{database.dialect}"
        connection_create(
            actor=None,
            name=name,
            label=f"ERP ({database.dialect})",
            kind="sql",
            team=team,
            config={key: value for key, value in database.config.items()},
            secrets=dict(database.secrets),
        )
        names[database.dialect] = name
    workflow = workflow_create(actor=analyst, name="Invoice lookup", team=team)
    return {"workflow": workflow, "names": names, "databases": {database.dialect: database for database in erp}}


def step_context(workflow: Any, *, key: str = "lookup", idempotency_key: str = "k" * 64, **data: Any) -> StepContext:
    return StepContext(
        run_id=1,
        step_key=key,
        input=data,
        steps={},
        idempotency_key=idempotency_key,
        workflow_id=workflow.pk,
    )


def execute(setup: dict[str, Any], dialect: str, context: StepContext, **config: Any) -> dict[str, Any]:
    parsed = SqlQueryConfig.model_validate({"connection": setup["names"][dialect], **config})
    assert SqlQuery.check_config(parsed) == [], SqlQuery.check_config(parsed)
    return SqlQuery().execute(parsed, context).output


@pytest.mark.django_db
@pytest.mark.parametrize("dialect", ["mysql", "postgresql"])
def test_a_read_binds_its_parameters(sql_workflow: dict[str, Any], dialect: str) -> None:
    context = step_context(sql_workflow["workflow"], po_number="PO-8120")
    output = execute(sql_workflow, dialect, context, statement=LOOKUP, parameters={"po": "input.po_number"})
    assert output == {
        "rows": [{"po_number": "PO-8120", "net_amount": "9500.00", "status": "open"}],
        "columns": ["po_number", "net_amount", "status"],
        "row_count": 1,
        "truncated": False,
    }


@pytest.mark.django_db
@pytest.mark.parametrize("dialect", ["mysql", "postgresql"])
def test_an_injection_attempt_is_only_a_value(sql_workflow: dict[str, Any], dialect: str) -> None:
    context = step_context(sql_workflow["workflow"], po_number="'; DROP TABLE purchase_orders; --")
    output = execute(sql_workflow, dialect, context, statement=LOOKUP, parameters={"po": "input.po_number"})
    assert output["rows"] == [] and output["row_count"] == 0
    assert sql_workflow["databases"][dialect].query("SELECT count(*) FROM purchase_orders") == [(3,)]


@pytest.mark.django_db
@pytest.mark.parametrize("dialect", ["mysql", "postgresql"])
def test_a_write_that_slipped_into_a_read_is_refused_at_run_time(sql_workflow: dict[str, Any], dialect: str) -> None:
    context = step_context(sql_workflow["workflow"], number="INV-3021")
    with pytest.raises(StepError, match="read-only transaction") as refused:
        execute(
            sql_workflow,
            dialect,
            context,
            statement="SELECT record_lookup(:n) AS done",
            parameters={"n": "input.number"},
        )
    assert not refused.value.retryable and refused.value.message.startswith('Step "lookup": ')
    assert sql_workflow["databases"][dialect].query("SELECT count(*) FROM postings") == [(0,)]


@pytest.mark.django_db
@pytest.mark.parametrize("dialect", ["mysql", "postgresql"])
def test_the_row_cap_from_the_step_or_the_connection(sql_workflow: dict[str, Any], dialect: str) -> None:
    context = step_context(sql_workflow["workflow"])
    capped = execute(
        sql_workflow, dialect, context, statement="SELECT vendor_id FROM vendors ORDER BY vendor_id", row_cap=2
    )
    assert capped["rows"] == [{"vendor_id": "V-1001"}, {"vendor_id": "V-1002"}] and capped["truncated"] is True
    whole = execute(sql_workflow, dialect, context, statement="SELECT vendor_id FROM vendors")
    assert whole["row_count"] == 3 and whole["truncated"] is False


@pytest.mark.django_db
def test_a_slow_statement_is_stopped_at_the_steps_time_limit(sql_workflow: dict[str, Any]) -> None:
    context = step_context(sql_workflow["workflow"])
    with pytest.raises(StepError, match="longer than its limit of 1 s") as stopped:
        execute(sql_workflow, "postgresql", context, statement="SELECT pg_sleep(5)", timeout_seconds=1)
    assert stopped.value.retryable


@pytest.mark.django_db
@pytest.mark.parametrize("dialect", ["mysql", "postgresql"])
def test_a_write_with_its_idempotency_key_takes_effect_once(sql_workflow: dict[str, Any], dialect: str) -> None:
    context = step_context(sql_workflow["workflow"], key="post", invoice="INV-3021", amount="1240.00")
    config = {"statement": POST, "mode": "write", "parameters": {"invoice": "input.invoice", "amount": "input.amount"}}
    first = execute(sql_workflow, dialect, context, **config)
    again = execute(sql_workflow, dialect, context, **config)
    assert first == {"row_count": 1, "already_applied": False}
    assert again == {"row_count": 0, "already_applied": True}
    database = sql_workflow["databases"][dialect]
    assert database.query("SELECT invoice_number, idempotency_key FROM postings") == [("INV-3021", "k" * 64)]
    # Another step (another key) writes its own row.
    other = step_context(sql_workflow["workflow"], key="post", idempotency_key="o" * 64, invoice="INV-5540", amount="1")
    assert execute(sql_workflow, dialect, other, **config) == {"row_count": 1, "already_applied": False}


@pytest.mark.django_db
@pytest.mark.parametrize("dialect", ["mysql", "postgresql"])
def test_a_duplicate_of_another_key_is_an_error_not_already_applied(sql_workflow: dict[str, Any], dialect: str) -> None:
    context = step_context(sql_workflow["workflow"], key="add")
    with pytest.raises(StepError, match="same key") as duplicate:
        execute(
            sql_workflow,
            dialect,
            context,
            statement="INSERT INTO vendors (vendor_id, name, country, payment_terms_days) VALUES (:id, 'X', 'DE', 30)",
            mode="write",
            delivery="at_most_once",
            parameters={"id": "'V-1001'"},
        )
    assert not duplicate.value.retryable and "V-1001" in duplicate.value.message


@pytest.mark.django_db
def test_update_reports_rows_affected_and_returning_rows(sql_workflow: dict[str, Any]) -> None:
    context = step_context(sql_workflow["workflow"], key="close")
    output = execute(
        sql_workflow,
        "postgresql",
        context,
        statement="UPDATE purchase_orders SET status = 'closed' WHERE vendor_id = :v RETURNING po_number",
        mode="write",
        delivery="at_most_once",
        parameters={"v": "'V-1001'"},
    )
    assert output == {
        "row_count": 1,
        "already_applied": False,
        "rows": [{"po_number": "PO-7781"}],
        "columns": ["po_number"],
        "truncated": False,
    }


@pytest.mark.django_db
def test_a_connection_the_workflow_may_not_use_is_refused(
    sql_workflow: dict[str, Any], analyst: Any, outsider: Any
) -> None:
    from apps.accounts.services import team_create
    from apps.workflows.services import workflow_create

    elsewhere = workflow_create(actor=outsider, name="Elsewhere", team=team_create(name="Finance", members=[outsider]))
    with pytest.raises(StepError, match='may not use the connection "erp-mysql"') as refused:
        execute(sql_workflow, "mysql", step_context(elsewhere), statement="SELECT 1 AS one")
    assert not refused.value.retryable
    parsed = SqlQueryConfig(connection="nope", statement="SELECT 1 AS one")
    with pytest.raises(StepError, match='no connection "nope"'):
        SqlQuery().execute(parsed, step_context(sql_workflow["workflow"]))


@pytest.mark.django_db
def test_errors_never_show_the_password(sql_workflow: dict[str, Any]) -> None:
    from apps.connectors.models import Connection
    from apps.connectors.services import connection_update

    connection = Connection.objects.get(name="erp-mysql")
    canary = "canary-Secret-90210"
    connection_update(actor=None, connection=connection, secrets={"password": canary})
    with pytest.raises(StepError) as refused:
        execute(sql_workflow, "mysql", step_context(sql_workflow["workflow"]), statement="SELECT 1 AS one")
    assert "Access denied" in refused.value.message and canary not in refused.value.message


@pytest.mark.django_db
def test_simulate_evaluates_parameters_and_sends_nothing(sql_workflow: dict[str, Any]) -> None:
    parsed = SqlQueryConfig(
        connection="erp-mysql", statement=POST, mode="write", parameters={"invoice": "input.n", "amount": "2"}
    )
    output = SqlQuery().simulate(parsed, step_context(sql_workflow["workflow"], n="INV-1"))
    assert output == {
        "row_count": 0,
        "already_applied": False,
        "simulated": True,
        "parameters": {"invoice": "INV-1", "amount": 2},
    }
    assert sql_workflow["databases"]["mysql"].query("SELECT count(*) FROM postings") == [(0,)]
