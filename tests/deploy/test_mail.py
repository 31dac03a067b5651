"""Mail leaves AIOS over real SMTP, and the embedded stack's catch-all keeps it as files a developer (or a test)
reads: sent from the test process, from a Celery worker, to a private server; the catch-all survives whatever a
client throws at it; the launcher starts, probes, logs and stops it like its other services.
"""

from __future__ import annotations

import smtplib
import socket
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from celery import shared_task
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, send_mail

from apps.core.env import smtp_server_from_url
from deploy.devstack.config import DevstackError, StackConfig, build_config, child_environment
from deploy.devstack.console import Console
from deploy.devstack.services import start_mailcatcher
from deploy.devstack.supervisor import Supervisor
from tests.support.processes import free_port, redis_url_with_db, running, service_env
from tests.support.smtp import (
    caught_messages,
    envelope_recipients,
    private_smtp_server,
    stack_mail_dir,
    use_real_smtp,
    wait_for_caught,
)
from tests.support.startup import manage, production_env
from workers import fleet


def unique_address(name: str) -> str:
    """A recipient no other test uses, so a test reads only its own messages from the shared catch-all."""
    return f"{name}+{uuid.uuid4().hex[:12]}@example.com"


# Sending from the test process ------------------------------------------------------------------------------


def test_send_mail_over_smtp_arrives_at_the_catch_all_as_a_file(settings: Any) -> None:
    use_real_smtp(settings)
    rita, max_ = unique_address("rita"), unique_address("max")
    message = EmailMessage(
        subject="Prüfung: 3 approvals wait for you ✓",
        body="Claim CLM-0042 waits for your decision.\nReply in AIOS, not to this mail.\n",
        to=[rita],
        bcc=[max_],
    )
    assert message.send() == 1

    [caught] = caught_messages(to=rita)
    assert caught["Subject"] == "Prüfung: 3 approvals wait for you ✓"
    assert caught["To"] == rita
    assert caught["From"] == settings.DEFAULT_FROM_EMAIL
    assert caught.get_content() == "Claim CLM-0042 waits for your decision.\nReply in AIOS, not to this mail.\n"
    # A Bcc recipient is in the envelope only, never in the headers the other recipients see.
    assert envelope_recipients(caught) == [rita, max_]
    assert "Bcc" not in caught
    assert [found["Message-ID"] for found in caught_messages(to=max_)] == [caught["Message-ID"]]

    # File names sort in arrival order, and the messages come back newest last.
    later = unique_address("rita")
    send_mail("Later", "Sent second.", None, [later])
    ours = [found["To"] for found in caught_messages() if found["To"] in (rita, later)]
    assert ours == [rita, later]
    assert all(path.name[:8].isdigit() for path in stack_mail_dir().glob("*.eml"))


def test_the_test_process_itself_keeps_mail_in_memory_by_default(mailoutbox: list[Any]) -> None:
    recipient = unique_address("otto")
    send_mail("Stays here", "Never leaves the process.", None, [recipient])
    assert [message.to for message in mailoutbox] == [[recipient]]
    assert caught_messages(to=recipient) == []


def test_a_private_server_receives_what_the_test_sends(settings: Any) -> None:
    with private_smtp_server() as server:
        use_real_smtp(settings, server)
        send_mail("Just for this test", "Body text.", "aios@example.com", ["ana@example.com", "rita@example.com"])
        [caught] = server.messages()
        assert caught["Subject"] == "Just for this test"
        assert caught["From"] == "aios@example.com"
        assert envelope_recipients(caught) == ["ana@example.com", "rita@example.com"]
        assert [found["Subject"] for found in server.messages(to="rita@example.com")] == ["Just for this test"]
        assert server.messages(to="max@example.com") == []
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=2).close()


# Sending from a Celery worker ---------------------------------------------------------------------------------


@shared_task(name="tests.deploy.send_mail")
def send_mail_task(recipient: str, subject: str) -> None:
    """Runs in the worker that test_a_celery_worker_sends_to_the_catch_all starts (it imports this module)."""
    send_mail(subject, "Sent by a Celery worker.", None, [recipient])


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_celery_worker_sends_to_the_catch_all(django_db_setup: Any, django_db_blocker: Any) -> None:
    """A worker started the way the stack starts its workers sends over SMTP to the address EMAIL_URL names."""
    from workers.celery import app

    stack_mail_dir()  # skip up front when the stack runs no catch-all
    # A broker of its own (Redis database 7): the session-wide worker does not know this module's task.
    broker = redis_url_with_db(django_settings.REDIS_URL, 7)
    with django_db_blocker.unblock():
        env = service_env(REDIS_URL=broker, CELERY_BROKER_URL=broker)
    worker = fleet.Worker("mail-worker", f"mail-{uuid.uuid4().hex[:8]}", ("default",), concurrency=1)
    argv = worker.argv(extra=("--without-gossip", "--without-mingle", "--without-heartbeat", "-I", __name__))
    recipient = unique_address("rita")
    with running("mail-worker", argv, ready=lambda log: " ready." in log, env=env):
        with app.connection_for_write(broker) as connection:
            app.send_task(
                "tests.deploy.send_mail", args=[recipient, "From the worker"], queue="default", connection=connection
            )
        [caught] = wait_for_caught(to=recipient, timeout=30)
    assert caught["Subject"] == "From the worker"
    assert caught.get_content() == "Sent by a Celery worker.\n"


# The catch-all under abuse ------------------------------------------------------------------------------------


class RawSmtp:
    """An SMTP client that sends exactly the bytes it is given (smtplib would repair line endings)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            assert line, "the server closed the connection"
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def listener_pid(port: int) -> int | None:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                return conn.pid
    except (psutil.Error, OSError):
        pass
    return None


def test_the_catch_all_survives_binary_and_malformed_input(settings: Any) -> None:
    directory = stack_mail_dir()
    host, port = settings.EMAIL_HOST, settings.EMAIL_PORT
    pid_before = listener_pid(port)
    binary_to, long_to = unique_address("binary"), unique_address("long")
    # A subject that is not UTF-8, a bare LF in the headers, NULs and invalid UTF-8 in the body.
    body = b"Subject: \xff\xfe\r\nX-Bare: lf\n\r\n" + b"\x00\x01\x02\xc3\x28 binary \x80\r\nbare\nline feeds\r\n"

    client = RawSmtp(host, port)
    try:
        assert client.send(b"EHLO fuzzer\r\n").startswith(b"250")
        assert client.send(b"NONSENSE \x00\xff\r\n").startswith(b"500")
        assert client.send(b"MAIL FROM:<fuzzer@example.com>\r\n").startswith(b"250")
        assert client.send(b"RCPT TO:<" + binary_to.encode() + b">\r\n").startswith(b"250")
        assert client.send(b"DATA\r\n").startswith(b"354")
        assert client.send(body + b".\r\n").startswith(b"250")
        # A line longer than SMTP allows is refused, and the session goes on.
        assert client.send(b"MAIL FROM:<fuzzer@example.com>\r\n").startswith(b"250")
        assert client.send(b"RCPT TO:<" + long_to.encode() + b">\r\n").startswith(b"250")
        assert client.send(b"DATA\r\n").startswith(b"354")
        assert client.send(b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n.\r\n").startswith(b"500")
        assert client.send(b"RSET\r\n").startswith(b"250")
    finally:
        client.close()
    # A client that drops the connection in the middle of a message.
    dropped = RawSmtp(host, port)
    for command in (b"EHLO dropper\r\n", b"MAIL FROM:<d@example.com>\r\n", b"RCPT TO:<d@example.com>\r\n", b"DATA\r\n"):
        dropped.send(command)
    dropped.sock.sendall(b"Subject: half\r\n\r\nhalf a mes")
    dropped.close()

    # Stored byte for byte, with the envelope in front.
    [stored] = [path for path in directory.glob("*.eml") if binary_to.encode() in path.read_bytes()]
    assert stored.read_bytes().endswith(body)
    assert caught_messages(to=long_to) == []
    # And still serving, as the same process: parsing the junk on the way back fails nothing either.
    use_real_smtp(settings)
    after = unique_address("after")
    send_mail("Still here", "The catch-all survived.", None, [after])
    assert [message["Subject"] for message in caught_messages(to=after)] == ["Still here"]
    assert len(caught_messages(to=binary_to)) == 1
    if pid_before is not None:
        assert listener_pid(port) == pid_before


# The launcher's wiring ----------------------------------------------------------------------------------------


def test_the_stack_hands_its_catch_all_to_every_child(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("EMAIL_URL", "DATABASE_URL", "REDIS_URL", "AIOS_INFERENCE_URL", "AIOS_SMTP_PORT", "AIOS_WEB_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIOS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AIOS_TEST_SMTP_PORT", "27025")

    run = build_config("run")
    assert run.smtp_port == 8025 and run.mail_dir == tmp_path / "mail"
    test = build_config("test")
    assert test.smtp_port == 27025 and test.mail_dir == tmp_path / "test" / "mail"
    assert ("AIOS_TEST_SMTP_PORT", 27025) in [(claim.variable, claim.port) for claim in test.port_claims()]
    env = child_environment(test)
    assert env["EMAIL_URL"] == "smtp://127.0.0.1:27025"
    assert env["AIOS_MAIL_CATCHER_DIR"] == str(tmp_path / "test" / "mail")

    monkeypatch.setenv("AIOS_SMTP_PORT", "8000")
    with pytest.raises(DevstackError, match="AIOS_SMTP_PORT and AIOS_WEB_PORT are both 8000"):
        build_config("run")

    # An external mail server replaces the catch-all, as DATABASE_URL replaces the embedded PostgreSQL.
    monkeypatch.setenv("EMAIL_URL", "smtp+starttls://relay.example.com:587")
    external = build_config("run")
    assert external.smtp_port is None
    assert "AIOS_SMTP_PORT" not in [claim.variable for claim in external.port_claims()]
    assert child_environment(external)["EMAIL_URL"] == "smtp+starttls://relay.example.com:587"


def test_the_launcher_starts_probes_logs_and_stops_the_catch_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    config = StackConfig(
        mode="run",
        base_data_dir=tmp_path,
        data_dir=tmp_path,
        postgres_port=None,
        redis_port=None,
        inference_port=None,
        web_port=None,
        smtp_port=port,
    )
    supervisor = Supervisor(Console(), config)
    supervisor.claim_data_dir()
    try:
        start_mailcatcher(supervisor, config, port, child_environment(config))
        [process] = supervisor.processes
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("aios@example.com", ["ana@example.com"], b"Subject: Hello\r\n\r\nHello, Ana.\r\n")
        [stored] = (tmp_path / "mail").glob("*.eml")
        assert stored.read_bytes().endswith(b"Subject: Hello\r\n\r\nHello, Ana.\r\n")
    finally:
        supervisor.stop_all()
    assert not process.alive()
    console = capsys.readouterr().out
    assert f"The catch-all SMTP server on port {port} is ready" in console
    assert f"caught 'Hello' for ana@example.com -> {stored.name}" in console
    assert "mail stopped." in console
    assert stored.name in (tmp_path / "logs" / "mail.log").read_text()


def test_the_test_stack_starts_with_an_empty_mailbox(tmp_path: Path) -> None:
    port = free_port()
    config = StackConfig(
        mode="test",
        base_data_dir=tmp_path,
        data_dir=tmp_path / "test",
        postgres_port=None,
        redis_port=None,
        inference_port=None,
        web_port=None,
        smtp_port=port,
    )
    config.mail_dir.mkdir(parents=True)
    (config.mail_dir / "20200101T000000.000000Z-000001.eml").write_bytes(b"Subject: old\r\n\r\nold\r\n")
    supervisor = Supervisor(Console(), config)
    supervisor.claim_data_dir()
    try:
        start_mailcatcher(supervisor, config, port, child_environment(config))
        assert list(config.mail_dir.glob("*.eml")) == []
    finally:
        supervisor.stop_all()


# Settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:8025", ("127.0.0.1", 8025, "", "", False, False)),
        ("smtp://mail.example.com", ("mail.example.com", 25, "", "", False, False)),
        (
            "smtp+starttls://aios%40example.com:p%40ss%3Aw@relay.example.com",
            ("relay.example.com", 587, "aios@example.com", "p@ss:w", True, False),
        ),
        ("smtps://aios:secret@relay.example.com:2465", ("relay.example.com", 2465, "aios", "secret", False, True)),
    ],
)
def test_email_url_names_the_smtp_server(url: str, expected: tuple[object, ...]) -> None:
    server = smtp_server_from_url("EMAIL_URL", url)
    assert (server.host, server.port, server.user, server.password, server.use_tls, server.use_ssl) == expected


def test_an_email_url_of_another_kind_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="EMAIL_URL must be a URL starting with smtp://"):
        smtp_server_from_url("EMAIL_URL", "submission://relay.example.com")


def test_production_refuses_to_start_without_its_mail_server_and_sender(tmp_path: Path) -> None:
    keys = production_env(EMAIL_URL=None, DJANGO_DEFAULT_FROM_EMAIL=None)
    result = manage("check", env=keys, data_dir=tmp_path)
    assert result.returncode != 0 and "EMAIL_URL must be set" in result.stderr
    result = manage("check", env={**keys, "EMAIL_URL": "smtp+starttls://relay.example.com"}, data_dir=tmp_path)
    assert result.returncode != 0 and "DJANGO_DEFAULT_FROM_EMAIL must be set." in result.stderr
    result = manage(
        "check",
        env={**keys, "EMAIL_URL": "relay.example.com:25", "DJANGO_DEFAULT_FROM_EMAIL": "aios@example.com"},
        data_dir=tmp_path,
    )
    assert result.returncode != 0 and "EMAIL_URL must be a URL starting with smtp://" in result.stderr
