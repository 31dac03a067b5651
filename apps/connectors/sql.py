"""Reaching a SQL database (PostgreSQL through psycopg 3, MySQL and MariaDB through PyMySQL) for `sql.query`
and the connection test.

Everything here takes a connection's plain settings (`config`: dialect, host, port, database, username,
statement_timeout_seconds, row_cap) and its decrypted secrets (`secrets["password"]`), so it does not depend on
how connections are stored.

The contract:
- Statements use one placeholder syntax for both dialects, `:name`. `statement_prepare` finds placeholders with
  sqlglot's tokenizer (so `:name` inside a string literal, a quoted identifier or a comment is text, and `::` is
  PostgreSQL's cast) and rewrites them to the drivers' `%(name)s`. Values are only ever bound as parameters.
- `statement_classify` says what a statement does (read, write, or something never allowed such as DDL).
- `sql_connect` resolves the host through the outbound address policy (apps.core.http.address_refusal) and
  connects to exactly the address it checked, then opens a transaction: read-only (PostgreSQL `SET TRANSACTION
  READ ONLY`; MySQL/MariaDB `START TRANSACTION READ ONLY`) or read-write, with the statement time limit
  (PostgreSQL `SET LOCAL statement_timeout`; MariaDB `max_statement_time`; MySQL `max_execution_time`, which
  MySQL applies to SELECT statements only).
- `sql_execute` runs one prepared statement and returns rows made JSON-safe, at most `row_cap` of them.
- Every failure is a `SqlError` whose message is the server's (the password is scrubbed from it in any case),
  marked `retryable` (a timeout, a lost connection, a deadlock) and `uncertain` (the COMMIT was sent and its
  answer lost: the write may or may not have happened).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import ipaddress
import itertools
import logging
import math
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from apps.core.exceptions import ApplicationError
from apps.core.http import Destinations, HostUnresolved, OutboundError, connection_address

logger = logging.getLogger(__name__)

DIALECTS = {"postgresql": "postgres", "mysql": "mysql"}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
CONNECT_TIMEOUT_SECONDS = 10
MAX_STATEMENT_LENGTH = 20_000
# The placeholder the step binds to its idempotency key (see apps/steps/library/sql_query.py).
IDEMPOTENCY_PARAMETER = "idempotency_key"


class SqlError(ApplicationError):
    """A statement or connection that failed; `message` is the server's reason, never a secret.

    `retryable`: the same statement may succeed later (a timeout, a lost connection, a deadlock).
    `uncertain`: the statement may have taken effect (the COMMIT was sent; its answer never arrived).
    `unique_violation`: the server refused a duplicate key (the write step's "already applied").
    """

    def __init__(
        self, message: str, *, retryable: bool = False, uncertain: bool = False, unique_violation: bool = False
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.uncertain = uncertain
        self.unique_violation = unique_violation


# --- statements ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedStatement:
    """A statement rewritten for the driver: `text` with `%(name)s` placeholders (and `%` doubled, as the drivers'
    parameter formatting wants), and the placeholder names in order of first use."""

    text: str
    names: tuple[str, ...]


def _sqlglot_dialect(dialect: str) -> str:
    try:
        return DIALECTS[dialect]
    except KeyError:
        raise SqlError(f'Unknown SQL dialect "{dialect}"; use postgresql or mysql.') from None


def _tokens(statement: str, dialect: str) -> list[Any]:
    try:
        return list(sqlglot.Dialect.get_or_raise(_sqlglot_dialect(dialect)).tokenize(statement))
    except TokenError as error:
        raise SqlError(f"The statement cannot be read: {str(error).splitlines()[0]}") from None


def _placeholder_spans(statement: str, dialect: str) -> list[tuple[int, int, str]]:
    """(start, end, name) of each `:name` placeholder: a colon token directly followed by a word token. String
    literals, quoted identifiers and comments are single tokens or no tokens at all, so nothing inside them is a
    placeholder; `::` is its own token (PostgreSQL's cast)."""
    tokens = _tokens(statement, dialect)
    spans = []
    for colon, word in itertools.pairwise(tokens):
        if colon.token_type != TokenType.COLON or word.start != colon.end + 1:
            continue
        # A keyword is a fine parameter name (`:date`, `:limit`) as long as it is a plain word.
        if word.token_type in (TokenType.STRING, TokenType.IDENTIFIER) or not word.text.isidentifier():
            continue
        if statement[word.start : word.end + 1] != word.text:
            continue
        spans.append((colon.start, word.end + 1, word.text))
    return spans


def statement_placeholders(statement: str, dialect: str) -> list[str]:
    """The distinct placeholder names of `statement`, in order of first use."""
    return list(dict.fromkeys(name for _, _, name in _placeholder_spans(statement, dialect)))


def statement_prepare(statement: str, dialect: str) -> PreparedStatement:
    """The statement in the drivers' `pyformat` style. Both psycopg and PyMySQL format the whole text when
    parameters are given (they always are here), so a literal `%` anywhere, even inside a string, is doubled."""
    parts: list[str] = []
    names: list[str] = []
    position = 0
    for start, end, name in _placeholder_spans(statement, dialect):
        parts.append(statement[position:start].replace("%", "%%"))
        parts.append(f"%({name})s")
        names.append(name)
        position = end
    parts.append(statement[position:].replace("%", "%%"))
    return PreparedStatement("".join(parts), tuple(dict.fromkeys(names)))


# What each kind of statement is, for the step's checks.
READ, WRITE = "read", "write"


@dataclass(frozen=True)
class Classification:
    """What a statement does: `kind` "read" or "write", or `refusal` (a sentence) when it may never run."""

    kind: str = READ
    refusal: str | None = None
    # Why a read-looking statement counts as a write (SELECT … INTO, a locking clause, a CTE that writes).
    why: str = ""


_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_DDL_NAMES = {
    "ALTER",
    "ANALYZE",
    "ATTACH",
    "CLUSTER",
    "COMMENT",
    "CREATE",
    "DETACH",
    "DISCARD",
    "DROP",
    "GRANT",
    "IMPORT",
    "LOAD",
    "RENAME",
    "REINDEX",
    "REVOKE",
    "TRUNCATE",
    "VACUUM",
}
_SESSION_NAMES = {
    "BEGIN",
    "CHECKPOINT",
    "COMMIT",
    "COPY",
    "DEALLOCATE",
    "DO",
    "EXECUTE",
    "FLUSH",
    "HANDLER",
    "KILL",
    "LISTEN",
    "LOCK",
    "NOTIFY",
    "PREPARE",
    "RELEASE",
    "RESET",
    "ROLLBACK",
    "SAVEPOINT",
    "SET",
    "START",
    "UNLOCK",
    "UNLISTEN",
    "USE",
    "XA",
}


def _parse(statement: str, dialect: str) -> list[exp.Expression]:
    sqlglot_logger = logging.getLogger("sqlglot")
    level = sqlglot_logger.level
    # sqlglot warns when it falls back to a generic Command; that is an answer here, not a warning.
    sqlglot_logger.setLevel(logging.ERROR)
    try:
        parsed = sqlglot.parse(statement, read=_sqlglot_dialect(dialect))
    except (ParseError, TokenError) as error:
        raise SqlError(f"The statement does not parse as {dialect} SQL: {_first_line(error)}") from None
    finally:
        sqlglot_logger.setLevel(level)
    return [expression for expression in parsed if expression is not None]  # type: ignore[misc]


def _first_line(error: Exception) -> str:
    text = str(error).replace("\x1b[4m", "").replace("\x1b[0m", "")
    return text.splitlines()[0] if text else type(error).__name__


def statement_classify(statement: str, dialect: str) -> Classification:
    """Whether `statement` (exactly one) reads or writes, or why it may never run (DDL, transaction or session
    control, several statements). Raises SqlError when it does not parse."""
    expressions = _parse(statement, dialect)
    if not expressions:
        return Classification(refusal="the statement is empty")
    if len(expressions) > 1:
        return Classification(refusal=f"it holds {len(expressions)} statements; give exactly one")
    root = expressions[0]
    if isinstance(root, exp.Command):
        # sqlglot leaves statements it has no model for as a Command named by their first word.
        word = str(root.this).upper().split()[0] if str(root.this).strip() else "?"
        if word == "CALL":
            return Classification(kind=WRITE, why="CALL runs a stored procedure, which may change data")
        if word == "REPLACE":
            return Classification(kind=WRITE, why="REPLACE writes rows")
        if word in _DDL_NAMES:
            return Classification(refusal=f"{word} changes the database's structure or rights (DDL is not allowed)")
        if word in _SESSION_NAMES:
            return Classification(refusal=f"{word} controls the session or transaction, which the step does itself")
        if word in ("EXPLAIN", "SHOW", "DESCRIBE", "DESC"):
            return Classification(refusal=f"{word} is not a query; write a SELECT")
        return Classification(refusal=f"{word} statements are not supported; write a SELECT or INSERT/UPDATE/DELETE")
    if isinstance(root, exp.Create | exp.Drop | exp.Alter | exp.TruncateTable | exp.Grant | exp.Comment):
        return Classification(refusal=f"{_name(root)} changes the database's structure or rights (DDL is not allowed)")
    if isinstance(root, exp.Set | exp.Use | exp.Transaction | exp.Commit | exp.Rollback | exp.Copy):
        return Classification(refusal=f"{_name(root)} controls the session, a transaction or bulk copy")
    if isinstance(root, exp.Show | exp.Describe):
        return Classification(refusal=f"{_name(root)} is not a query; write a SELECT")
    if isinstance(root, _WRITES):
        return Classification(kind=WRITE)
    if isinstance(root, exp.Query | exp.Values):
        for node in root.walk():
            if isinstance(node, _WRITES):
                return Classification(kind=WRITE, why=f"it contains {_name(node)} (a data-modifying WITH)")
            if isinstance(node, exp.Select) and node.args.get("into"):
                return Classification(kind=WRITE, why="SELECT … INTO creates or fills a table")
            if isinstance(node, exp.Select) and node.args.get("locks"):
                return Classification(kind=WRITE, why="a locking clause (FOR UPDATE / FOR SHARE) takes row locks")
        return Classification(kind=READ)
    return Classification(refusal=f"{_name(root)} statements are not supported; write a SELECT or INSERT/UPDATE/DELETE")


_NAMES = {"truncatetable": "TRUNCATE", "transaction": "BEGIN", "describe": "EXPLAIN/DESCRIBE", "anonymous": "This"}


def _name(node: exp.Expression) -> str:
    return _NAMES.get(node.key, node.key.upper())


# --- values --------------------------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """A column value as JSON. Decimals become strings: NUMERIC columns hold money and quantities whose every digit
    counts, and a JSON number is read back as a binary float (12.10 would come back as 12.1, and 0.1 + 0.2 as
    0.30000000000000004); an expression that wants arithmetic converts explicitly (`double(row.amount)`).
    Dates, times and timestamps become ISO 8601 text, bytes base64, UUIDs text; JSON columns stay structured."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Interface):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    return str(value)


# --- connecting ----------------------------------------------------------------------------------------------


def _resolve(host: str, port: int, dialect: str, destinations: Destinations | None) -> str:
    """The one address to connect to (apps.core.http.connection_address: a public address on the dialect's
    default port, or one the connection's administrator allowed); a name that does not resolve may resolve
    later (retryable), a refused address will not."""
    try:
        return connection_address(host, port, default_ports={DEFAULT_PORTS[dialect]}, destinations=destinations)
    except HostUnresolved as error:
        raise SqlError(error.message, retryable=True) from None
    except OutboundError as error:
        raise SqlError(error.message) from None


def _scrub(text: str, secrets: Mapping[str, str]) -> str:
    for secret in secrets.values():
        if secret and len(secret) >= 3:
            text = text.replace(secret, "********")
    return text


@dataclass
class SqlSession:
    """One open connection in one transaction. `connection` is the driver's DB-API connection; `server` is
    "postgresql", "mariadb" or "mysql"; `version` the server's version text."""

    connection: Any
    dialect: str
    server: str
    version: str
    read_only: bool
    timeout_seconds: float
    secrets: Mapping[str, str] = field(repr=False, default_factory=dict)

    def commit(self) -> None:
        """Commit the transaction. A connection lost while the COMMIT is under way leaves the outcome unknown."""
        try:
            self.connection.commit()
        except Exception as error:
            raise _translate(error, self, committing=True) from None

    def rollback(self) -> None:
        try:
            self.connection.rollback()
        except Exception:  # the transaction dies with the connection anyway
            logger.debug("rollback failed", exc_info=True)

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:
            logger.debug("close failed", exc_info=True)


def sql_connect(
    config: Mapping[str, Any],
    secrets: Mapping[str, str],
    *,
    read_only: bool,
    timeout_seconds: float,
    destinations: Destinations | None = None,
) -> SqlSession:
    """Connect as the connection's user and open a transaction, read-only when `read_only`, in which every
    statement is limited to `timeout_seconds`; `destinations`: the connection's allowlists (a private server or
    another port needs them). Raises SqlError (refused address, unreachable, bad login)."""
    dialect = str(config.get("dialect") or "postgresql")
    _sqlglot_dialect(dialect)
    host = str(config.get("host") or "")
    port = int(config.get("port") or 0) or DEFAULT_PORTS[dialect]
    address = _resolve(host, port, dialect, destinations)
    password = secrets.get("password", "")
    username = str(config.get("username") or "")
    database = str(config.get("database") or "")
    if dialect == "postgresql":
        return _connect_postgresql(host, address, port, database, username, password, read_only, timeout_seconds)
    return _connect_mysql(host, address, port, database, username, password, read_only, timeout_seconds)


def _connect_postgresql(
    host: str,
    address: str,
    port: int,
    database: str,
    username: str,
    password: str,
    read_only: bool,
    timeout_seconds: float,
) -> SqlSession:
    import psycopg

    secrets = {"password": password}
    try:
        # hostaddr pins the checked address; host stays the name, for TLS verification and the server's logs.
        connection = psycopg.connect(
            host=host,
            hostaddr=address,
            port=port,
            dbname=database,
            user=username,
            password=password,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name="aios",
            autocommit=False,
        )
    except Exception as error:
        raise _connect_error(error, host, port, secrets) from None
    session = SqlSession(
        connection,
        "postgresql",
        "postgresql",
        str(connection.info.parameter_status("server_version") or ""),
        read_only,
        timeout_seconds,
        secrets,
    )
    try:
        with connection.cursor() as cursor:
            # psycopg has begun a transaction with the first statement; both settings hold for it only.
            cursor.execute("SET TRANSACTION READ ONLY" if read_only else "SET TRANSACTION READ WRITE")
            cursor.execute(f"SET LOCAL statement_timeout = {_milliseconds(timeout_seconds)}")
            cursor.execute(f"SET LOCAL idle_in_transaction_session_timeout = {_milliseconds(timeout_seconds) + 5000}")
    except Exception as error:
        session.close()
        raise _translate(error, session) from None
    return session


def _connect_mysql(
    host: str,
    address: str,
    port: int,
    database: str,
    username: str,
    password: str,
    read_only: bool,
    timeout_seconds: float,
) -> SqlSession:
    import pymysql  # type: ignore[import-untyped]

    secrets = {"password": password}
    try:
        connection = pymysql.connect(
            host=address,
            port=port,
            user=username,
            password=password,
            database=database,
            charset="utf8mb4",
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            # The server's time limit ends a statement first; this only catches a server that stopped answering.
            read_timeout=int(timeout_seconds) + 10,
            write_timeout=int(timeout_seconds) + 10,
            autocommit=False,
            client_flag=0,  # no CLIENT.MULTI_STATEMENTS: the driver refuses `a; b`
        )
    except Exception as error:
        raise _connect_error(error, host, port, secrets) from None
    version = str(connection.get_server_info())
    # MariaDB prefixes "5.5.5-" to its version in the handshake, for clients of old that parse the first number.
    version = version.removeprefix("5.5.5-")
    server = "mariadb" if "mariadb" in version.lower() else "mysql"
    session = SqlSession(connection, "mysql", server, version, read_only, timeout_seconds, secrets)
    try:
        with connection.cursor() as cursor:
            if server == "mariadb":
                # Seconds, fractions allowed; it ends any statement, reads and writes alike.
                cursor.execute(f"SET SESSION max_statement_time = {max(timeout_seconds, 0.001):.3f}")
            else:
                # Milliseconds; MySQL applies it to SELECT statements only (a write is bounded by read_timeout).
                cursor.execute(f"SET SESSION max_execution_time = {_milliseconds(timeout_seconds)}")
            cursor.execute("START TRANSACTION READ ONLY" if read_only else "START TRANSACTION READ WRITE")
    except Exception as error:
        session.close()
        raise _translate(error, session) from None
    return session


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _connect_error(error: Exception, host: str, port: int, secrets: Mapping[str, str]) -> SqlError:
    reason = _scrub(_server_message(error), secrets)
    # A refused login is not going to succeed on a retry; an unreachable server may.
    denied = any(
        marker in reason.lower() for marker in ("password", "access denied", "authentication", "does not exist")
    )
    return SqlError(f"Could not connect to {host}:{port}: {reason}", retryable=not denied)


def _server_message(error: Exception) -> str:
    """The server's own words: psycopg's primary message (and detail), PyMySQL's (code, message) pair."""
    diag = getattr(error, "diag", None)
    if diag is not None and getattr(diag, "message_primary", None):
        text = str(diag.message_primary)
        if getattr(diag, "message_detail", None):
            text += f" ({diag.message_detail})"
        return text
    args: tuple[Any, ...] = tuple(getattr(error, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{args[1]} (error {args[0]})"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# PostgreSQL SQLSTATEs and MySQL/MariaDB error numbers for what a retry may cure.
_PG_RETRYABLE = {"57014", "40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03", "08000", "08003", "08006"}
_PG_TIMEOUT = {"57014", "25P03"}
_MYSQL_TIMEOUT = {1969, 3024, 1317}  # MariaDB max_statement_time, MySQL max_execution_time, interrupted
_MYSQL_RETRYABLE = {1205, 1213, 2006, 2013, 2003, 1040, 1053, *_MYSQL_TIMEOUT}
_MYSQL_LOST = {2006, 2013, 2055}


def _translate(error: Exception, session: SqlSession, *, committing: bool = False) -> SqlError:
    """The driver's exception as a SqlError with the server's message and what a retry may do."""
    if isinstance(error, SqlError):
        return error
    message = _scrub(_server_message(error), session.secrets)
    if session.dialect == "postgresql":
        import psycopg

        state = getattr(getattr(error, "diag", None), "sqlstate", None) or getattr(error, "sqlstate", None)
        lost = isinstance(error, psycopg.OperationalError) and state is None
        if committing and lost:
            return SqlError(
                f"The connection was lost while committing; the change may or may not have been saved: {message}",
                retryable=True,
                uncertain=True,
            )
        if state in _PG_TIMEOUT:
            return SqlError(
                f"The statement took longer than its limit of {session.timeout_seconds:g} s: {message}",
                retryable=True,
            )
        if state == "23505":
            return SqlError(f"A row with the same key exists: {message}", unique_violation=True)
        if state == "25006":
            return SqlError(f"Refused: the statement tried to write in a read-only transaction: {message}")
        return SqlError(message, retryable=lost or state in _PG_RETRYABLE)
    code = error.args[0] if error.args and isinstance(error.args[0], int) else None
    if committing and (code in _MYSQL_LOST or code is None):
        return SqlError(
            f"The connection was lost while committing; the change may or may not have been saved: {message}",
            retryable=True,
            uncertain=True,
        )
    if code in _MYSQL_TIMEOUT:
        return SqlError(
            f"The statement took longer than its limit of {session.timeout_seconds:g} s: {message}", retryable=True
        )
    if code == 1062:
        return SqlError(f"A row with the same key exists: {message}", unique_violation=True)
    if code == 1792:
        return SqlError(f"Refused: the statement tried to write in a read-only transaction: {message}")
    return SqlError(message, retryable=code in _MYSQL_RETRYABLE or code is None)


# --- running -------------------------------------------------------------------------------------------------


@dataclass
class SqlResult:
    """What a statement returned: `columns` and `rows` (dicts of JSON-safe values, at most the cap), whether more
    rows were there (`truncated`), and `row_count` (rows returned by a query; rows affected by a write)."""

    columns: list[str]
    rows: list[dict[str, Any]]
    row_count: int
    truncated: bool
    returns_rows: bool


def sql_execute(
    session: SqlSession, statement: PreparedStatement, parameters: Mapping[str, Any], *, row_cap: int
) -> SqlResult:
    """Run one prepared statement with its parameters bound by the driver, fetching at most `row_cap` + 1 rows
    (the extra one only says that there were more). The transaction stays open: commit or roll back."""
    missing = [name for name in statement.names if name not in parameters]
    if missing:
        raise SqlError(f"No value for the placeholder(s) {', '.join(':' + name for name in missing)}.")
    bound = {name: parameters[name] for name in statement.names}
    try:
        if session.dialect == "postgresql":
            return _execute_postgresql(session, statement.text, bound, row_cap)
        return _execute_mysql(session, statement.text, bound, row_cap)
    except Exception as error:
        raise _translate(error, session) from None


def _result(cursor: Any, rows: list[Any], row_cap: int, row_count: int | None = None) -> SqlResult:
    columns = [str(column[0]) for column in cursor.description or ()]
    truncated = len(rows) > row_cap
    kept = rows[:row_cap]
    return SqlResult(
        columns=columns,
        rows=[{name: json_safe(value) for name, value in zip(columns, row, strict=False)} for row in kept],
        row_count=len(kept) if row_count is None else row_count,
        truncated=truncated,
        returns_rows=cursor.description is not None,
    )


def _execute_postgresql(session: SqlSession, text: str, bound: dict[str, Any], row_cap: int) -> SqlResult:
    connection = session.connection
    if session.read_only:
        # Streamed row by row and cancelled after cap + 1 rows, so the client never holds more, however many the
        # query would return. (A server-side cursor would too, but DECLARE takes SELECTs only, and a write that
        # slipped past the checks must meet the read-only transaction's refusal, not a syntax error.)
        with connection.cursor() as cursor:
            stream = cursor.stream(text, bound)
            try:
                rows = list(itertools.islice(stream, row_cap + 1))
            finally:
                stream.close()
            return _result(cursor, rows, row_cap)
    with connection.cursor() as cursor:
        # psycopg sends a statement without parameters over the simple-query protocol, where `a; b` runs both;
        # in a pipeline every statement goes over the extended protocol, whose one Parse holds one statement,
        # so the server refuses a second one even if it got past the parser (the stream above is extended too).
        with connection.pipeline():
            cursor.execute(text, bound)
        affected = max(cursor.rowcount, 0)
        rows = cursor.fetchmany(row_cap + 1) if cursor.description is not None else []
        return _result(cursor, rows, row_cap, row_count=affected)


def _execute_mysql(session: SqlSession, text: str, bound: dict[str, Any], row_cap: int) -> SqlResult:
    import pymysql.cursors  # type: ignore[import-untyped]

    connection = session.connection
    if session.read_only:
        with connection.cursor() as cursor:
            # The server stops after cap + 1 rows of the outer SELECT (an explicit LIMIT still wins), and the
            # unbuffered cursor holds only what it was asked for.
            cursor.execute(f"SET SESSION sql_select_limit = {row_cap + 1}")
        cursor = connection.cursor(pymysql.cursors.SSCursor)
        try:
            cursor.execute(text, bound)
            return _result(cursor, list(cursor.fetchmany(row_cap + 1)), row_cap)
        finally:
            cursor.close()
    with connection.cursor() as cursor:
        cursor.execute(text, bound)
        affected = max(cursor.rowcount, 0)
        rows = list(cursor.fetchmany(row_cap + 1)) if cursor.description is not None else []
        return _result(cursor, rows, row_cap, row_count=affected)


@contextmanager
def sql_session(
    config: Mapping[str, Any],
    secrets: Mapping[str, str],
    *,
    read_only: bool,
    timeout_seconds: float,
    destinations: Destinations | None = None,
) -> Iterator[SqlSession]:
    """`sql_connect` as a block: rolled back (unless committed) and closed at its end."""
    session = sql_connect(
        config, secrets, read_only=read_only, timeout_seconds=timeout_seconds, destinations=destinations
    )
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def sql_test(config: Mapping[str, Any], secrets: Mapping[str, str], *, destinations: Destinations | None = None) -> str:
    """The connection test: connect, run `SELECT 1` in a read-only transaction, and describe the server (e.g.
    "MariaDB 10.11.19"). Raises SqlError with the server's reason."""
    timeout = float(config.get("statement_timeout_seconds") or 10)
    with sql_session(
        config, secrets, read_only=True, timeout_seconds=min(timeout, 10), destinations=destinations
    ) as session:
        sql_execute(session, statement_prepare("SELECT 1", session.dialect), {}, row_cap=1)
        label = {"postgresql": "PostgreSQL", "mariadb": "MariaDB", "mysql": "MySQL"}[session.server]
        return f"{label} {session.version.split('-')[0]}"
