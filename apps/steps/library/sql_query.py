"""`sql.query`: one parameterised statement against a SQL connection (PostgreSQL, MySQL or MariaDB)."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import sqlglot
from django.conf import settings
from pydantic import Field
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from apps.connectors.sql import (
    DIALECTS,
    IDEMPOTENCY_PARAMETER,
    READ,
    Classification,
    SqlError,
    sql_execute,
    sql_session,
    statement_classify,
    statement_placeholders,
    statement_prepare,
)
from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType, Uses
from apps.steps.expressions import ExpressionError, cel_check, cel_evaluate
from apps.steps.registry import register

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_ROW_CAP = 1000
MAX_ROW_CAP = 100_000


class SqlQueryConfig(StepConfig):
    connection: str = Field(
        min_length=1,
        title="Connection",
        description="The SQL database to query: one of the connections this workflow may use.",
        json_schema_extra={"x-widget": "connection-sql"},
    )
    statement: str = Field(
        min_length=1,
        max_length=20_000,
        title="SQL statement",
        description="Exactly one statement. Put values in named placeholders, never in the text: "
        "SELECT net_amount FROM purchase_orders WHERE po_number = :po_number. Each placeholder needs a parameter. "
        "In write mode, :idempotency_key stands for this step's key, stable across retries: an INSERT that stores it "
        "in a column with a unique constraint is recognised as already applied when repeated.",
        json_schema_extra={"x-rows": 6},
    )
    parameters: dict[str, str] = Field(
        default_factory=dict,
        title="Parameters",
        description="Each placeholder's name (without the colon) and an expression for its value, e.g. "
        "po_number → steps.extract.data.po_number. Values are sent separately from the statement, so they can "
        "never change what it does.",
        json_schema_extra={"x-widget": "cel"},
    )
    mode: Literal["read", "write"] = Field(
        "read",
        title="Mode",
        description="read: a read-only transaction (a change to this database's tables is refused; for full "
        "safety give the connection a database user that may only read). write: INSERT, UPDATE, DELETE or MERGE, "
        "committed once the statement succeeds.",
    )
    row_cap: int | None = Field(
        None,
        ge=1,
        le=MAX_ROW_CAP,
        title="Row limit",
        description="Most rows returned; more rows set `truncated`. Empty: the connection's limit.",
    )
    timeout_seconds: float | None = Field(
        None,
        gt=0,
        le=600,
        title="Time limit (seconds)",
        description="Longest a statement may run before the database stops it. Empty: the connection's limit.",
    )
    delivery: Literal["at_least_once", "at_most_once"] = Field(
        "at_least_once",
        title="Delivery (writes)",
        description="at_least_once: a write whose outcome is unknown is tried again; only an INSERT that stores "
        ":idempotency_key in a unique column may do so (the repeat is recognised). at_most_once: such a write goes "
        "to a person instead (needed for UPDATE, DELETE, upserts and anything else).",
    )


RETRY_SAFE_HOW = (
    "Write it as one INSERT that stores :idempotency_key in a column with a unique constraint, e.g. INSERT INTO "
    "postings (invoice_number, amount, idempotency_key) VALUES (:invoice, :amount, :idempotency_key), or set "
    "delivery to at_most_once (a person decides after an unknown outcome)."
)


_UNPARSED = "it does not parse as one statement"


def _parse_one(statement: str, dialect: str) -> exp.Expr | None:
    sqlglot_logger = logging.getLogger("sqlglot")
    level = sqlglot_logger.level
    sqlglot_logger.setLevel(logging.ERROR)
    try:
        parsed = [item for item in sqlglot.parse(statement, read=DIALECTS[dialect]) if item is not None]
    except (ParseError, TokenError, KeyError):
        return None
    finally:
        sqlglot_logger.setLevel(level)
    return parsed[0] if len(parsed) == 1 else None


def _is_key(node: exp.Expr) -> bool:
    """Whether a value is the idempotency key itself (bare, aliased or cast), so the stored value is the key."""
    while isinstance(node, exp.Alias | exp.Cast | exp.Paren):
        node = node.this
    return isinstance(node, exp.Placeholder) and node.name == IDEMPOTENCY_PARAMETER


def retry_unsafe_reason(statement: str, dialect: str) -> str | None:
    """Why repeating `statement` after an unknown outcome could apply it twice (None when a repeat is refused by
    the database itself).

    A repeat is recognised only when it collides with the first attempt's row: the statement must be one INSERT
    (plain, or ON CONFLICT … DO NOTHING) whose single inserted row (or SELECT list) stores :idempotency_key, which
    the table keeps in a unique column. Merely mentioning the key does not make a write repeatable:
    `UPDATE accounts SET balance = balance - :amount WHERE id = :id AND :idempotency_key IS NOT NULL` debits twice,
    and so does an upsert (ON CONFLICT DO UPDATE, ON DUPLICATE KEY UPDATE) or INSERT IGNORE, which swallow the
    collision. Whether the column is unique cannot be seen from the statement; the step's help says so.
    """
    root = _parse_one(statement, dialect)
    if root is None:
        return _UNPARSED
    if not isinstance(root, exp.Insert):
        return f"{root.key.upper()} is not an INSERT, so a repeat is not refused by a unique key"
    if root.args.get("ignore"):
        return "INSERT IGNORE swallows the duplicate that would recognise a repeat"
    conflict = root.args.get("conflict")
    if conflict is not None and (conflict.args.get("duplicate") or str(conflict.args.get("action")) != "DO NOTHING"):
        return "an upsert (ON CONFLICT … DO UPDATE, ON DUPLICATE KEY UPDATE) changes the row again on a repeat"
    for node in root.walk():
        if node is not root and isinstance(node, exp.Insert | exp.Update | exp.Delete | exp.Merge):
            return f"it also contains {node.key.upper()}, which a repeat would apply again"
    source = root.expression
    if isinstance(source, exp.Values):
        rows = source.expressions
        if len(rows) != 1:
            return "it inserts several rows with the same :idempotency_key; insert one row"
        values = rows[0].expressions if isinstance(rows[0], exp.Tuple) else [rows[0]]
    elif isinstance(source, exp.Select):
        values = source.expressions
    else:
        return "it inserts neither VALUES nor a SELECT"
    if not any(_is_key(value) for value in values):
        return "the inserted values do not include :idempotency_key itself"
    return None


def _classify_any_dialect(statement: str) -> tuple[Classification | None, list[str], str | None]:
    """At publish the connection's dialect is not known yet: the statement must parse as one of them. Returns the
    strictest classification among the dialects it parses in, its placeholders, or the parse error."""
    found: list[tuple[Classification, list[str]]] = []
    first_error = None
    for dialect in DIALECTS:
        try:
            found.append((statement_classify(statement, dialect), statement_placeholders(statement, dialect)))
        except SqlError as error:
            first_error = first_error or error.message
    if not found:
        return None, [], first_error
    refused = [item for item in found if item[0].refusal]
    writes = [item for item in found if item[0].kind != READ]
    classification, placeholders = (refused or writes or found)[0]
    return classification, placeholders, None


def _statement_problems(
    config: SqlQueryConfig, classification: Classification, placeholders: list[str], dialects: list[str]
) -> list[str]:
    """What is wrong with the statement for this step; `dialects` are those it may run in (all of them at
    publish, where it must suit one; the connection's at run time)."""
    problems = []
    if classification.refusal:
        problems.append(f"statement: refused: {classification.refusal}.")
        return problems
    if config.mode == "read" and classification.kind != READ:
        why = f" ({classification.why})" if classification.why else ""
        problems.append(
            f"statement: this statement changes data{why}, but the step is in read mode; set the mode to write "
            "if the change is intended."
        )
    named = set(config.parameters)
    for name in placeholders:
        if name != IDEMPOTENCY_PARAMETER and name not in named:
            problems.append(f"statement: the placeholder :{name} has no parameter; add one named {name}.")
    for name in config.parameters:
        if name not in placeholders:
            problems.append(f"parameters.{name}: not used in the statement (write :{name} where its value goes).")
    if config.mode == "write" and config.delivery == "at_least_once":
        reasons = [retry_unsafe_reason(config.statement, dialect) for dialect in dialects]
        if all(reasons):
            # The reason from a dialect the statement is written for, not "does not parse" from the other one.
            reason = next((item for item in reasons if item != _UNPARSED), reasons[0])
            problems.append(
                f"statement: a write that is tried again after an unknown outcome could be applied twice "
                f"({reason}). {RETRY_SAFE_HOW}"
            )
    return problems


@register
class SqlQuery(StepType):
    """Runs one statement through a SQL connection, values bound as parameters, never spliced into the text.

    Read mode (the default) runs in a read-only transaction with the statement time limit, so a statement that
    slipped past the publish checks (a function with side effects) cannot change this database's tables; it is not
    a guarantee against everything (a call out through dblink or a foreign table runs in another session), so a
    connection used for reads should log in as a database user that may only read. At most `row_cap`
    rows are returned. Output: `{"rows": [{column: value}], "columns": [...], "row_count", "truncated"}`. Values
    are JSON: NUMERIC/DECIMAL columns as strings, so no digit of an amount is lost to binary floating point
    (convert with `double(...)` for arithmetic); dates and timestamps as ISO 8601 text; bytes as base64.

    Write mode commits the statement and outputs `{"row_count", "already_applied": false}` (plus `rows` and
    `columns` when it returns rows, e.g. RETURNING). Why a write behaves correctly under retries: the engine
    records the intent in the effect ledger before the call. A failure before COMMIT rolls the transaction back
    (nothing happened: a plain retry is safe); the only unknown outcome is a connection lost during COMMIT, or a
    worker that died after the COMMIT and before the result was recorded. A repeat is safe only when the database
    itself can recognise it: the statement is one INSERT (plain, or ON CONFLICT … DO NOTHING) whose inserted row
    stores `:idempotency_key` (the step's key, the same on every attempt) in a unique column, so the repeat fails
    with a duplicate of exactly that key, which the step reports as `{"row_count": 0, "already_applied": true}`
    (or, with DO NOTHING, inserts nothing). Any other write (an UPDATE, a DELETE, an upsert, an INSERT that
    merely mentions the key) must be `at_most_once` (publishing refuses it otherwise, `retry_unsafe_reason`), and
    the engine hands an unknown outcome to a person instead of repeating it.

    Errors carry the server's message (never a secret): timeouts, lost connections and deadlocks are retryable;
    syntax, permission and constraint errors are not.
    """

    slug = "sql.query"
    name = "SQL query"
    description = (
        "Look up or change rows in a SQL database (PostgreSQL, MySQL, MariaDB) with a parameterised statement."
    )
    Config = SqlQueryConfig
    category = "Connectors"
    queue = "connectors"
    side_effects = True
    replay_reuses_output = True

    @classmethod
    def uses(cls, config: SqlQueryConfig) -> list[Uses]:
        return [Uses("connection", config.connection, kind="sql", field="connection")]

    @staticmethod
    def check_config(config: SqlQueryConfig) -> list[str]:
        problems = []
        if "{{" in config.statement or "{%" in config.statement:
            problems.append(
                "statement: templates ({{ … }}, {% … %}) would splice text into the SQL; put each value in a "
                "placeholder such as :po_number and give it a parameter."
            )
        for name, expression in config.parameters.items():
            if name == IDEMPOTENCY_PARAMETER:
                problems.append(f"parameters.{name}: reserved: :{name} is the step's own key, filled in by the step.")
            elif not name.isidentifier():
                problems.append(f'parameters: "{name}" is not a valid placeholder name (letters, digits and _).')
            problem = cel_check(expression)
            if problem:
                problems.append(f"parameters.{name}: the expression does not parse: {problem}")
        if problems and any(problem.startswith("statement: templates") for problem in problems):
            return problems
        classification, placeholders, error = _classify_any_dialect(config.statement)
        if classification is None:
            problems.append(f"statement: {error}")
            return problems
        problems.extend(_statement_problems(config, classification, placeholders, list(DIALECTS)))
        return problems

    def _parameters(self, config: SqlQueryConfig, context: StepContext) -> dict[str, Any]:
        variables = context.expression_variables()
        values: dict[str, Any] = {}
        for name, expression in config.parameters.items():
            try:
                value = cel_evaluate(expression, variables)
            except ExpressionError as error:
                raise StepError(
                    f'Step "{context.step_key}", parameter "{name}": the expression `{expression}` failed: {error}'
                ) from None
            # A map has no SQL counterpart in both dialects: it goes as JSON text (fine for a JSON column). A
            # list binds as an array on PostgreSQL (`= ANY(:ids)`) and as a list on MySQL (`IN :ids`).
            values[name] = json.dumps(value) if isinstance(value, dict) else value
        values[IDEMPOTENCY_PARAMETER] = context.idempotency_key
        return values

    def simulate(self, config: SqlQueryConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        # Parameters are evaluated (so an expression error still shows in a test run); nothing is sent.
        parameters = self._parameters(config, context)
        shown = {name: value for name, value in parameters.items() if name in config.parameters}
        if config.mode == "write":
            return {"row_count": 0, "already_applied": False, "simulated": True, "parameters": shown}
        return {"rows": [], "columns": [], "row_count": 0, "truncated": False, "simulated": True, "parameters": shown}

    def execute(self, config: SqlQueryConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        from apps.connectors.runtime import connection_for_step, redact
        from apps.core.exceptions import ApplicationError

        label = f'Step "{context.step_key}"'
        try:
            resolved = connection_for_step(config.connection, kind="sql", workflow_id=context.workflow_id)
        except ApplicationError as error:
            raise StepError(f"{label}: {error.message}") from None
        dialect = str(resolved.config.get("dialect") or "postgresql")
        # Checked again for the connection's own dialect: publishing could only check that some dialect parses it.
        try:
            classification = statement_classify(config.statement, dialect)
            placeholders = statement_placeholders(config.statement, dialect)
        except SqlError as error:
            raise StepError(f"{label}: {error.message}") from None
        problems = _statement_problems(config, classification, placeholders, [dialect])
        if problems:
            raise StepError(f"{label}: {problems[0]}")
        parameters = self._parameters(config, context)
        row_cap = config.row_cap or int(resolved.config.get("row_cap") or DEFAULT_ROW_CAP)
        timeout = config.timeout_seconds or float(resolved.config.get("statement_timeout_seconds") or 0)
        # Well inside the step's lease, so the database gives up before the engine thinks the worker is gone.
        timeout = min(timeout or DEFAULT_TIMEOUT_SECONDS, settings.AIOS_STEP_LEASE_SECONDS / 2)
        write = config.mode == "write"
        try:
            with sql_session(
                resolved.config,
                resolved.secrets,
                read_only=not write,
                timeout_seconds=timeout,
                destinations=resolved.destinations,
            ) as db:
                result = sql_execute(db, statement_prepare(config.statement, dialect), parameters, row_cap=row_cap)
                if write:
                    db.commit()
        except SqlError as error:
            message = redact(error.message, resolved.secret_values())
            if (
                write
                and error.unique_violation
                and IDEMPOTENCY_PARAMETER in placeholders
                and context.idempotency_key in error.message
            ):
                # The duplicate is this step's own key: an earlier attempt's write committed.
                return StepOutcome(output={"row_count": 0, "already_applied": True})
            raise StepError(f"{label}: {message}", retryable=error.retryable, uncertain=error.uncertain) from None
        usage = {"connection": resolved.name, "server": db.server, "mode": config.mode}
        if write:
            output: dict[str, Any] = {"row_count": result.row_count, "already_applied": False}
            if result.returns_rows:
                output.update(rows=result.rows, columns=result.columns, truncated=result.truncated)
            return StepOutcome(output=output, usage=usage)
        return StepOutcome(
            output={
                "rows": result.rows,
                "columns": result.columns,
                "row_count": result.row_count,
                "truncated": result.truncated,
            },
            usage=usage,
        )
