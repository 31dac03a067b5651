"""A small IMAP4rev1 server for tests (RFC 3501), over a real socket: what a client needs to read a mailbox. It
stands in for a mailbox provider; nothing of the product is faked.

    with ImapServer(users={"inbox@example.com": "pw"}, folders={"INBOX": 0}) as server:
        uid = server.deliver(raw_message_bytes)
        client = imaplib.IMAP4("127.0.0.1", server.port)
        client.login("inbox@example.com", "pw")
        client.select("INBOX")
        client.uid("SEARCH", "UNSEEN")            # ('OK', [b'1'])
        client.uid("FETCH", "1", "(BODY.PEEK[])")  # the message as a literal, \\Seen not set
        client.uid("STORE", "1", "+FLAGS.SILENT", "(\\\\Seen)")

Commands: CAPABILITY, NOOP, LOGIN, SELECT, EXAMINE, SEARCH, FETCH, STORE (and their UID forms), CLOSE, LOGOUT.
Arguments are atoms, quoted strings, literals (`{n}` then n bytes, after the server's "+" continuation) or
parenthesised lists. Answers use the RFC's forms: SELECT sends FLAGS, EXISTS, RECENT, UIDVALIDITY, UIDNEXT and
PERMANENTFLAGS before `OK [READ-WRITE]`; FETCH answers `* <seq> FETCH (UID <uid> ... BODY[] {<n>}` CRLF, then the
n bytes of the message; a UID FETCH or UID STORE always includes the UID; BODY[] and RFC822 set \\Seen (and say so
with FLAGS), BODY.PEEK[] does not. `UID SEARCH UID n:*` includes the newest message even when its UID is below n,
as the RFC's "*" means (section 6.4.8), so a client must filter.

Faults for tests: `drop_on_store` closes the connection when that many more STORE commands arrive, without
applying them (a session lost between reading a message and marking it); `fetch_delay` slows every FETCH;
`renumber()` gives a folder a new UIDVALIDITY with its messages renumbered and unread (a rebuilt folder).
`commands` lists every command line received (the tag left off), `logins` every LOGIN attempt.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import socketserver
import threading
import time
from dataclasses import dataclass, field
from typing import Any

_SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


@dataclass
class Message:
    uid: int
    raw: bytes
    flags: set[str] = field(default_factory=set)
    internal_date: float = field(default_factory=time.time)


@dataclass
class Folder:
    uidvalidity: int
    uidnext: int = 1
    messages: list[Message] = field(default_factory=list)


class _Closed(Exception):
    """The client went away (or a fault closes the session)."""


def _placeholder(number: int) -> bytes:
    return (
        f"From: sender{number}@example.com\r\nTo: inbox@example.com\r\nSubject: Message {number}\r\n"
        f"Message-ID: <placeholder-{number}@example.com>\r\n\r\nBody {number}\r\n"
    ).encode()


def _tokens(text: bytes) -> list[Any]:
    """The arguments of a command line: parenthesised lists as lists, quoted strings and atoms as str. Literals
    were replaced by markers before (`_Session.read_command`) and come back as atoms."""
    position = 0
    stack: list[list[Any]] = [[]]
    while position < len(text):
        char = text[position : position + 1]
        if char == b" ":
            position += 1
        elif char == b"(":
            stack.append([])
            position += 1
        elif char == b")":
            if len(stack) == 1:
                raise ValueError("unbalanced )")
            inner = stack.pop()
            stack[-1].append(inner)
            position += 1
        elif char == b'"':
            end = position + 1
            value = bytearray()
            while end < len(text) and text[end : end + 1] != b'"':
                if text[end : end + 1] == b"\\":
                    end += 1
                value += text[end : end + 1]
                end += 1
            if end >= len(text):
                raise ValueError("unterminated quoted string")
            stack[-1].append(value.decode("utf-8", errors="replace"))
            position = end + 1
        else:
            # An atom; brackets may hold spaces and parentheses (BODY.PEEK[HEADER.FIELDS (SUBJECT)]).
            end, depth = position, 0
            while end < len(text):
                piece = text[end : end + 1]
                if piece == b"[":
                    depth += 1
                elif piece == b"]":
                    depth -= 1
                elif depth == 0 and piece in (b" ", b"(", b")"):
                    break
                end += 1
            stack[-1].append(text[position:end].decode("utf-8", errors="replace"))
            position = end
    if len(stack) != 1:
        raise ValueError("unbalanced (")
    return stack[0]


def _sequence_set(text: str, largest: int) -> set[int] | None:
    """RFC 3501 sequence-set: numbers, `a:b` ranges in either order, `*` for the largest in use. None if it does
    not parse."""
    chosen: set[int] = set()
    for part in text.split(","):
        bounds = part.split(":")
        if len(bounds) not in (1, 2):
            return None
        values = []
        for bound in bounds:
            if bound == "*":
                values.append(largest)
            elif bound.isdigit() and int(bound) > 0:
                values.append(int(bound))
            else:
                return None
        if largest == 0 and "*" in bounds:
            continue  # "*" in an empty folder names nothing
        low, high = min(values), max(values)
        chosen.update(range(low, high + 1))
    return chosen


class _Session:
    """One client's connection: reads commands (with literals) and writes answers."""

    def __init__(self, server: ImapServer, handler: Any) -> None:
        self.server = server
        self.rfile = handler.rfile
        self.wfile = handler.wfile
        self.user: str | None = None
        self.folder: str | None = None
        self.read_only = False

    def send(self, data: bytes | str) -> None:
        self.wfile.write((data.encode() if isinstance(data, str) else data) + b"\r\n")
        self.wfile.flush()

    def read_command(self) -> tuple[bytes, list[bytes]]:
        """A whole command: its line(s) with each literal replaced by a marker, and the literals' bytes."""
        line = self.rfile.readline()
        if not line:
            raise _Closed
        literals: list[bytes] = []
        text = line.rstrip(b"\r\n")
        while True:
            match = re.search(rb"\{(\d+)(\+?)\}$", text)
            if not match:
                return text, literals
            size = int(match.group(1))
            if not match.group(2):
                self.send("+ Ready for literal data")
            data = self.rfile.read(size)
            if len(data) < size:
                raise _Closed
            literals.append(data)
            rest = self.rfile.readline()
            if not rest:
                raise _Closed
            text = text[: match.start()] + f"\x00{len(literals) - 1}\x00".encode() + rest.rstrip(b"\r\n")

    def arguments(self, text: bytes, literals: list[bytes]) -> list[Any]:
        def restore(item: Any) -> Any:
            if isinstance(item, list):
                return [restore(value) for value in item]
            marker = re.fullmatch(r"\x00(\d+)\x00", item)
            if marker:
                return literals[int(marker.group(1))].decode("utf-8", errors="replace")
            return item

        return [restore(item) for item in _tokens(text)]

    def run(self) -> None:
        self.send("* OK [CAPABILITY IMAP4rev1] Test IMAP server ready")
        while True:
            text, literals = self.read_command()
            tag, _, rest = text.partition(b" ")
            command_text, _, argument_text = rest.partition(b" ")
            command = command_text.decode("utf-8", errors="replace").upper()
            shown = re.sub(rb"\x00\d+\x00", b"{literal}", rest).decode("utf-8", errors="replace")
            with self.server.lock:
                self.server.commands.append(shown)
            tag_text = tag.decode("utf-8", errors="replace")
            try:
                arguments = self.arguments(argument_text, literals)
            except ValueError as error:
                self.send(f"{tag_text} BAD {error}")
                continue
            uid = False
            if command == "UID" and arguments and isinstance(arguments[0], str):
                uid, command, arguments = True, arguments[0].upper(), arguments[1:]
            if not self.dispatch(tag_text, command, arguments, uid=uid):
                return

    def dispatch(self, tag: str, command: str, arguments: list[Any], *, uid: bool) -> bool:
        """Answer one command; False when the session ends."""
        if command == "CAPABILITY" and not uid:
            self.send("* CAPABILITY IMAP4rev1")
            self.send(f"{tag} OK CAPABILITY completed")
        elif command == "NOOP" and not uid:
            self.send(f"{tag} OK NOOP completed")
        elif command == "LOGOUT" and not uid:
            self.send("* BYE Logging out")
            self.send(f"{tag} OK LOGOUT completed")
            return False
        elif command == "LOGIN" and not uid and len(arguments) == 2 and all(isinstance(a, str) for a in arguments):
            ok = self.server.users.get(arguments[0]) == arguments[1]
            with self.server.lock:
                self.server.logins.append((arguments[0], ok))
            if ok:
                self.user = arguments[0]
                self.send(f"{tag} OK [CAPABILITY IMAP4rev1] LOGIN completed")
            else:
                self.send(f"{tag} NO [AUTHENTICATIONFAILED] {self.server.login_refusal}")
        elif self.user is None:
            self.send(f"{tag} BAD Log in first")
        elif command in ("SELECT", "EXAMINE") and not uid and len(arguments) == 1:
            self.select(tag, command, str(arguments[0]))
        elif command == "CLOSE" and not uid:
            self.folder = None
            self.send(f"{tag} OK CLOSE completed")
        elif self.folder is None:
            self.send(f"{tag} BAD Select a mailbox first")
        elif command == "SEARCH":
            self.search(tag, arguments, uid=uid)
        elif command == "FETCH" and len(arguments) == 2:
            self.fetch(tag, arguments, uid=uid)
        elif command == "STORE" and len(arguments) == 3:
            return self.store(tag, arguments, uid=uid)
        else:
            self.send(f"{tag} BAD Unknown command or arguments")
        return True

    def select(self, tag: str, command: str, name: str) -> None:
        with self.server.lock:
            folder = self.server.mailboxes.get(name)
            if folder is None:
                self.folder = None
                self.send(f"{tag} NO [NONEXISTENT] Mailbox doesn't exist: {name}")
                return
            self.folder = name
            self.read_only = command == "EXAMINE"
            messages = folder.messages
            unseen = [number for number, m in enumerate(messages, 1) if "\\Seen" not in m.flags]
            lines = [
                f"* FLAGS ({' '.join(_SYSTEM_FLAGS)})",
                f"* {len(messages)} EXISTS",
                "* 0 RECENT",
                f"* OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid",
                f"* OK [UIDNEXT {folder.uidnext}] Predicted next UID",
                "* OK [PERMANENTFLAGS ()] No permanent flags permitted"
                if self.read_only
                else f"* OK [PERMANENTFLAGS ({' '.join(_SYSTEM_FLAGS)})] Limited",
            ]
            if unseen:
                lines.insert(3, f"* OK [UNSEEN {unseen[0]}] First unseen")
        for line in lines:
            self.send(line)
        self.send(f"{tag} OK [{'READ-ONLY' if self.read_only else 'READ-WRITE'}] {command} completed")

    def _chosen(self, text: str, *, uid: bool) -> list[tuple[int, Message]] | None:
        """(sequence number, message) for a sequence set of UIDs or of sequence numbers; None if it does not parse."""
        messages = self.server.mailboxes[str(self.folder)].messages
        if uid:
            wanted = _sequence_set(text, messages[-1].uid if messages else 0)
            if wanted is None:
                return None
            return [(number, m) for number, m in enumerate(messages, 1) if m.uid in wanted]
        wanted = _sequence_set(text, len(messages))
        if wanted is None:
            return None
        return [(number, m) for number, m in enumerate(messages, 1) if number in wanted]

    def search(self, tag: str, arguments: list[Any], *, uid: bool) -> None:
        with self.server.lock:
            messages = self.server.mailboxes[str(self.folder)].messages
            found = list(enumerate(messages, 1))
            items = list(arguments)
            while items:
                key = str(items.pop(0)).upper() if isinstance(items[0], str) else ""
                if key == "ALL":
                    continue
                if key in ("UNSEEN", "SEEN"):
                    found = [(n, m) for n, m in found if ("\\Seen" in m.flags) == (key == "SEEN")]
                elif key == "UID" and items:
                    chosen = self._chosen(str(items.pop(0)), uid=True)
                    if chosen is None:
                        self.send(f"{tag} BAD Invalid UID set")
                        return
                    keep = {m.uid for _, m in chosen}
                    found = [(n, m) for n, m in found if m.uid in keep]
                elif key and re.fullmatch(r"[\d*:,]+", key):
                    chosen = self._chosen(key, uid=False)
                    if chosen is None:
                        self.send(f"{tag} BAD Invalid sequence set")
                        return
                    keep = {n for n, _ in chosen}
                    found = [(n, m) for n, m in found if n in keep]
                else:
                    self.send(f"{tag} BAD Search key not supported here")
                    return
            numbers = [str(m.uid if uid else n) for n, m in found]
        self.send("* SEARCH" + "".join(f" {number}" for number in numbers))
        self.send(f"{tag} OK {'UID ' if uid else ''}SEARCH completed")

    def fetch(self, tag: str, arguments: list[Any], *, uid: bool) -> None:
        wanted = arguments[1] if isinstance(arguments[1], list) else [arguments[1]]
        names = [str(name).upper() for name in wanted]
        allowed = {"UID", "FLAGS", "RFC822.SIZE", "RFC822", "BODY[]", "BODY.PEEK[]", "INTERNALDATE"}
        if any(name not in allowed for name in names):
            self.send(f"{tag} BAD Fetch attribute not supported here")
            return
        if self.server.fetch_delay:
            time.sleep(self.server.fetch_delay)
        with self.server.lock:
            chosen = self._chosen(str(arguments[0]), uid=uid)
            if chosen is None:
                self.send(f"{tag} BAD Invalid sequence set")
                return
            answers: list[bytes] = []
            for number, message in chosen:
                parts: list[bytes] = []
                marks = not self.read_only and any(name in ("RFC822", "BODY[]") for name in names)
                newly_seen = marks and "\\Seen" not in message.flags
                if marks:
                    message.flags.add("\\Seen")
                if uid or "UID" in names:
                    parts.append(f"UID {message.uid}".encode())
                if "FLAGS" in names or newly_seen:
                    parts.append(f"FLAGS ({' '.join(sorted(message.flags))})".encode())
                if "RFC822.SIZE" in names:
                    parts.append(f"RFC822.SIZE {len(message.raw)}".encode())
                if "INTERNALDATE" in names:
                    stamp = email.utils.formatdate(message.internal_date, localtime=False)
                    parts.append(f'INTERNALDATE "{stamp}"'.encode())
                for name in names:
                    if name in ("RFC822", "BODY[]", "BODY.PEEK[]"):
                        label = "RFC822" if name == "RFC822" else "BODY[]"
                        parts.append(f"{label} {{{len(message.raw)}}}\r\n".encode() + message.raw)
                answers.append(f"* {number} FETCH (".encode() + b" ".join(parts) + b")")
        for answer in answers:
            self.send(answer)
        self.send(f"{tag} OK {'UID ' if uid else ''}FETCH completed")

    def store(self, tag: str, arguments: list[Any], *, uid: bool) -> bool:
        with self.server.lock:
            if self.server.drop_on_store > 0:
                self.server.drop_on_store -= 1
                if self.server.drop_on_store == 0:
                    self.server.stores_dropped += 1
                    return False  # the connection closes; the flag is never set
        operation = str(arguments[1]).upper()
        flags = arguments[2] if isinstance(arguments[2], list) else [arguments[2]]
        if operation not in ("FLAGS", "+FLAGS", "-FLAGS", "FLAGS.SILENT", "+FLAGS.SILENT", "-FLAGS.SILENT"):
            self.send(f"{tag} BAD Unknown STORE operation")
            return True
        if self.read_only:
            self.send(f"{tag} NO [READ-ONLY] Mailbox is read-only")
            return True
        with self.server.lock:
            chosen = self._chosen(str(arguments[0]), uid=uid)
            if chosen is None:
                self.send(f"{tag} BAD Invalid sequence set")
                return True
            answers = []
            for number, message in chosen:
                given = {str(flag) for flag in flags}
                if operation.startswith("+"):
                    message.flags |= given
                elif operation.startswith("-"):
                    message.flags -= given
                else:
                    message.flags = given
                if not operation.endswith(".SILENT"):
                    uid_part = f"UID {message.uid} " if uid else ""
                    answers.append(f"* {number} FETCH ({uid_part}FLAGS ({' '.join(sorted(message.flags))}))")
        for answer in answers:
            self.send(answer)
        self.send(f"{tag} OK {'UID ' if uid else ''}STORE completed")
        return True


@dataclass
class ImapServer:
    """See the module docstring. `folders` names the folders and how many placeholder messages each starts with;
    `host` is the address it listens on ("0.0.0.0": every IPv4 address of the machine, not only loopback)."""

    users: dict[str, str] = field(default_factory=dict)
    folders: dict[str, int] = field(default_factory=lambda: {"INBOX": 0})
    login_refusal: str = "Invalid credentials"
    drop_on_store: int = 0
    fetch_delay: float = 0.0
    logins: list[tuple[str, bool]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    stores_dropped: int = 0
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        outer = self
        self.lock = threading.RLock()
        self.mailboxes: dict[str, Folder] = {}
        for index, (name, count) in enumerate(self.folders.items(), 1):
            self.mailboxes[name] = Folder(uidvalidity=1000 + index)
            for number in range(count):
                self.deliver(_placeholder(number + 1), folder=name)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with contextlib.suppress(_Closed, ConnectionError):
                    _Session(outer, self).run()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, 0), Handler)
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

    def deliver(self, raw: bytes, *, folder: str = "INBOX", seen: bool = False) -> int:
        """Put a message in a folder (as a mail server would); its UID."""
        with self.lock:
            box = self.mailboxes[folder]
            message = Message(uid=box.uidnext, raw=raw, flags={"\\Seen"} if seen else set())
            box.messages.append(message)
            box.uidnext += 1
            return message.uid

    def flags(self, uid: int, *, folder: str = "INBOX") -> set[str]:
        with self.lock:
            return next(set(m.flags) for m in self.mailboxes[folder].messages if m.uid == uid)

    def renumber(self, *, folder: str = "INBOX", first_uid: int = 1) -> None:
        """A rebuilt folder: a new UIDVALIDITY, the same messages with new UIDs from `first_uid`, all unread."""
        with self.lock:
            box = self.mailboxes[folder]
            box.uidvalidity += 1
            for offset, message in enumerate(box.messages):
                message.uid = first_uid + offset
                message.flags.clear()
            box.uidnext = first_uid + len(box.messages)
