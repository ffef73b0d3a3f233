"""MLLP client: one persistent TCP (or TLS) connection, one message at a time.

Frame: 0x0B + message + 0x1C 0x0D.  The ACK is read until 0x1C 0x0D under a
deadline (a peer may split it over many TCP segments, or never answer), and is
accepted only when its MSA-2 equals the MSH-10 that was sent: after any
timeout or protocol error the connection is closed, so a late ACK can never
confirm the next message.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: An ACK larger than this is a protocol error (a misbehaving peer, not an ACK).
MAX_ACK_BYTES = 1 << 20

#: accepted: MSA-1 AA/CA; error: AE/CE; reject: AR/CR; transport: no usable ACK
#: (connect failure, timeout, closed connection, bad frame, wrong MSA-2).
Outcome = Literal["accepted", "error", "reject", "transport"]


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
    return START_BLOCK + message + END_BLOCK


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
            get = lambda i: f[i] if len(f) > i else ""  # noqa: E731
            err = next((s for s in segments if s.startswith("ERR" + sep)), "")
            text = get(3) or err
            return Ack(code=get(1).strip().upper(), control_id=get(2).split(comp)[0].strip(), text=text, raw=raw)
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
            except (socket.timeout, TimeoutError):
                raise MllpError(f"no ACK within {self.ack_timeout:g} s") from None
            if not chunk:
                raise MllpError("connection closed by the receiver before the ACK")
            self._buffer += chunk
        data, _, self._buffer = self._buffer.partition(END_BLOCK)
        start = data.find(START_BLOCK)
        if start < 0 or data[:start].strip():
            raise MllpError("ACK not framed with 0x0B")
        return data[start + 1:]

    def _exchange(self, message: bytes, codec: str) -> Ack:
        assert self._sock is not None
        self._sock.settimeout(self.ack_timeout)
        self._sock.sendall(frame(message))
        raw = self._read_frame().decode(codec, errors="replace")
        return parse_ack(raw)

    def send(self, message: bytes, control_id: str, codec: str = "utf-8") -> SendResult:
        """Send one framed message and classify the ACK; never raises for
        network or protocol problems (they become ``transport`` results and
        close the connection)."""
        reused = self._sock is not None
        if not reused:
            try:
                self.connect()
            except (OSError, ssl.SSLError) as exc:
                self.close()
                return SendResult("transport", f"connect to {self.host}:{self.port} failed: {_describe(exc)}",
                                  connect_failed=True)
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
            return SendResult("transport", f"ACK MSA-2 {ack.control_id!r} does not match MSH-10 {control_id!r}",
                              ack=ack.raw)
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
