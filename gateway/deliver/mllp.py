"""MLLP client: one TCP (or TLS) connection, one message at a time.

Frame: 0x0B + message (every segment ending with CR) + 0x1C 0x0D.  The ACK is read until 0x1C 0x0D under a
deadline (a peer may split it over many TCP segments, or never answer), and is
accepted only when its MSA-2 equals the MSH-10 that was sent: after any
timeout or protocol error the connection is closed, so a late ACK can never
confirm the next message.  The connection is kept open across messages, or
closed after each ACK (``keep_open=False``: one connection per message).

Before a message is framed, :func:`frame_problem` checks that it cannot
break the frame or the segment structure (the last line of defence behind
the ORU builder's escaping): such a message is never sent.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
SEGMENT_END = b"\x0d"
#: An ACK larger than this is a protocol error (a misbehaving peer, not an ACK).
MAX_ACK_BYTES = 1 << 20

#: accepted: MSA-1 AA/CA; error: AE/CE; reject: AR/CR; transport: no usable ACK
#: (connect failure, timeout, closed connection, bad frame, wrong MSA-2);
#: unsendable: the message failed :func:`frame_problem` and was not sent.
Outcome = Literal["accepted", "error", "reject", "transport", "unsendable"]

#: A segment starts with its 3-character id and the field separator.
_SEGMENT_ID = re.compile(rb"[A-Z][A-Z0-9]{2}")
#: Control bytes other than CR: none belongs in an ER7 message.
_CONTROL_BYTES = re.compile(rb"[\x00-\x0c\x0e-\x1f\x7f]")


class MllpError(Exception):
    """Transport or protocol failure: the connection must be closed."""


@dataclass(frozen=True)
class Ack:
    """The fields of an ACK the sender acts on."""

    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3 or ERR, for the operator
    raw: str


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    detail: str
    ack: str | None = None
    #: True when no connection could be made (the message never left).
    connect_failed: bool = False


def frame(message: bytes) -> bytes:
    """0x0B + ``message`` + 0x1C 0x0D.  HL7 ends every segment with CR, the
    last one too: the stored ER7 joins segments with CR, so the last CR is
    added here."""
    return START_BLOCK + message + (b"" if message.endswith(SEGMENT_END) else SEGMENT_END) + END_BLOCK


def frame_problem(message: bytes) -> str | None:
    """Why ``message`` (encoded ER7) must not be sent, or None.

    Refused: a start (0x0B) or end (0x1C) block byte or any other control
    byte but CR; a message that does not start with ``MSH`` or holds a second
    MSH; a CR that does not end a segment (one not followed by a segment id
    and the field separator).  The reason names the byte offset, never the
    content."""
    for byte, name in ((START_BLOCK, "0x0B (MLLP start block)"), (b"\x1c", "0x1C (MLLP end block)")):
        if byte in message:
            return f"contains {name} at byte {message.index(byte)}"
    if not message.startswith(b"MSH") or len(message) < 8:
        return "does not start with an MSH segment"
    bad = _CONTROL_BYTES.search(message)
    if bad:
        return f"contains control byte 0x{bad.group()[0]:02X} at byte {bad.start()}"
    separator = message[3:4]
    offset = 0
    for n, segment in enumerate(message.split(b"\r")):
        if n and segment:
            if not (_SEGMENT_ID.match(segment) and segment[3:4] in (separator, b"")):
                return f"a CR at byte {offset - 1} does not end a segment"
            if segment.startswith(b"MSH"):
                return f"a second MSH segment at byte {offset}"
        elif n and not segment and offset < len(message):
            return f"an empty segment at byte {offset}"
        offset += len(segment) + 1
    return None


def _field(fields: list[str], i: int) -> str:
    """Field ``i`` of a split segment; "" when the segment is shorter."""
    return fields[i] if len(fields) > i else ""


def parse_ack(raw: str) -> Ack:
    """MSA-1/2/3 of an ACK of any HL7 v2 version (tolerant: only MSH's field
    separator and the MSA segment are needed).  Raises :class:`MllpError`
    when there is no MSH or no MSA."""
    segments = [s for s in raw.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise MllpError("ACK does not start with MSH")
    sep = segments[0][3]
    comp = segments[0][4] if len(segments[0]) > 4 else "^"
    for seg in segments:
        if seg.startswith("MSA" + sep):
            f = seg.split(sep)
            err = next((s for s in segments if s.startswith("ERR" + sep)), "")
            text = _field(f, 3) or err
            return Ack(
                code=_field(f, 1).strip().upper(), control_id=_field(f, 2).split(comp)[0].strip(), text=text, raw=raw
            )
    raise MllpError("ACK has no MSA segment")


def make_ssl_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """Client TLS context: verifies the server against ``ca_file`` (else the
    system CAs) and its host name; presents a client certificate when given."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


@dataclass
class MllpClient:
    """A reconnecting MLLP sender.  Not thread-safe: one per sender thread."""

    host: str
    port: int
    connect_timeout: float
    ack_timeout: float
    ssl_context: ssl.SSLContext | None = None
    #: False: close the connection after every ACK (one connection per message).
    keep_open: bool = True
    _sock: socket.socket | None = field(default=None, repr=False)
    _buffer: bytes = field(default=b"", repr=False)

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._buffer = b""

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._buffer = b""

    def _read_frame(self) -> bytes:
        """Bytes between 0x0B and 0x1C 0x0D, within ``ack_timeout`` in total."""
        assert self._sock is not None
        deadline = time.monotonic() + self.ack_timeout
        while END_BLOCK not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MllpError(f"no ACK within {self.ack_timeout:g} s")
            if len(self._buffer) > MAX_ACK_BYTES:
                raise MllpError("ACK larger than 1 MiB")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise MllpError(f"no ACK within {self.ack_timeout:g} s") from None
            if not chunk:
                raise MllpError("connection closed by the receiver before the ACK")
            self._buffer += chunk
        data, _, self._buffer = self._buffer.partition(END_BLOCK)
        start = data.find(START_BLOCK)
        if start < 0 or data[:start].strip():
            raise MllpError("ACK not framed with 0x0B")
        return data[start + 1 :]

    def _exchange(self, message: bytes, codec: str) -> Ack:
        assert self._sock is not None
        self._sock.settimeout(self.ack_timeout)
        self._sock.sendall(frame(message))
        raw = self._read_frame().decode(codec, errors="replace")
        return parse_ack(raw)

    def send(self, message: bytes, control_id: str, codec: str = "utf-8") -> SendResult:
        """Send one framed message and classify the ACK; never raises for
        network or protocol problems (they become ``transport`` results and
        close the connection).  A message that fails :func:`frame_problem`
        is not sent (``unsendable``)."""
        problem = frame_problem(message)
        if problem:
            return SendResult("unsendable", f"not sent: the message {problem}")
        try:
            return self._send(message, control_id, codec)
        finally:
            if not self.keep_open:
                self.close()

    def _send(self, message: bytes, control_id: str, codec: str) -> SendResult:
        reused = self._sock is not None
        if not reused:
            try:
                self.connect()
            except (OSError, ssl.SSLError) as exc:
                self.close()
                return SendResult(
                    "transport", f"connect to {self.host}:{self.port} failed: {_describe(exc)}", connect_failed=True
                )
        try:
            try:
                ack = self._exchange(message, codec)
            except (ConnectionError, MllpError) as exc:
                # An idle persistent connection may have been dropped by the
                # peer (restart): retry once on a fresh one.  Harmless if the
                # first copy did arrive: same MSH-10.
                if not reused or not _dropped(exc):
                    raise
                self.connect()
                ack = self._exchange(message, codec)
        except (OSError, ssl.SSLError, MllpError) as exc:
            self.close()
            return SendResult("transport", _describe(exc))
        if ack.control_id != control_id:
            self.close()
            return SendResult(
                "transport", f"ACK MSA-2 {ack.control_id!r} does not match MSH-10 {control_id!r}", ack=ack.raw
            )
        if ack.code in ("AA", "CA"):
            return SendResult("accepted", f"{ack.code}", ack=ack.raw)
        if ack.code in ("AE", "CE"):
            return SendResult("error", f"{ack.code}: {ack.text}".rstrip(": "), ack=ack.raw)
        if ack.code in ("AR", "CR"):
            return SendResult("reject", f"{ack.code}: {ack.text}".rstrip(": "), ack=ack.raw)
        self.close()
        return SendResult("transport", f"ACK MSA-1 {ack.code!r} is not AA, AE or AR", ack=ack.raw)


def _dropped(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError) or "connection closed" in str(exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(exc) or type(exc).__name__
