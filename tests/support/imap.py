"""A small IMAP4rev1 server for tests (RFC 3501): enough of the real protocol, over a real socket, for a client
to greet it, ask its CAPABILITY, LOGIN, SELECT or EXAMINE a folder, NOOP and LOGOUT. It stands in for a
mailbox provider; nothing of the product is faked.

    with ImapServer(users={"inbox@example.com": "pw"}, folders={"INBOX": 3}) as server:
        imaplib.IMAP4("127.0.0.1", server.port).login("inbox@example.com", "pw")

Tagged answers follow the RFC's forms: `a1 OK [READ-ONLY] EXAMINE completed`, `a2 NO [AUTHENTICATIONFAILED]
Invalid credentials`, `a3 BAD ...` for commands it does not know. Arguments are atoms or quoted strings.
"""

from __future__ import annotations

import re
import socketserver
import threading
from dataclasses import dataclass, field
from typing import Any

_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')


def _arguments(text: str) -> list[str]:
    return [
        quoted.replace('\\"', '"').replace("\\\\", "\\") if quoted is not None else atom
        for quoted, atom in ((m.group(1), m.group(2)) for m in _ARGUMENT.finditer(text))
    ]


@dataclass
class ImapServer:
    """See the module docstring. `logins` counts the attempts it saw, successful or not."""

    users: dict[str, str] = field(default_factory=dict)
    folders: dict[str, int] = field(default_factory=lambda: {"INBOX": 0})
    logins: list[tuple[str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._session(self)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="imap", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> ImapServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _session(self, handler: Any) -> None:
        def send(line: str) -> None:
            handler.wfile.write(line.encode() + b"\r\n")
            handler.wfile.flush()

        send("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Test IMAP server ready")
        user: str | None = None
        while True:
            raw = handler.rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            tag, _, rest = line.partition(" ")
            command, _, argument_text = rest.partition(" ")
            command = command.upper()
            arguments = _arguments(argument_text)
            if command == "CAPABILITY":
                send("* CAPABILITY IMAP4rev1 AUTH=PLAIN")
                send(f"{tag} OK CAPABILITY completed")
            elif command == "NOOP":
                send(f"{tag} OK NOOP completed")
            elif command == "LOGIN" and len(arguments) == 2:
                ok = self.users.get(arguments[0]) == arguments[1]
                self.logins.append((arguments[0], ok))
                if ok:
                    user = arguments[0]
                    send(f"{tag} OK [CAPABILITY IMAP4rev1] LOGIN completed")
                else:
                    send(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials")
            elif command in ("SELECT", "EXAMINE") and len(arguments) == 1:
                if user is None:
                    send(f"{tag} BAD Log in first")
                elif arguments[0] not in self.folders:
                    send(f"{tag} NO [NONEXISTENT] Mailbox doesn't exist: {arguments[0]}")
                else:
                    count = self.folders[arguments[0]]
                    send("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)")
                    send(f"* {count} EXISTS")
                    send("* 0 RECENT")
                    send("* OK [UIDVALIDITY 1] UIDs valid")
                    send(f"* OK [UIDNEXT {count + 1}] Predicted next UID")
                    mode = "READ-ONLY" if command == "EXAMINE" else "READ-WRITE"
                    send(f"{tag} OK [{mode}] {command} completed")
            elif command == "LOGOUT":
                send("* BYE Logging out")
                send(f"{tag} OK LOGOUT completed")
                return
            else:
                send(f"{tag} BAD Unknown command or arguments")
