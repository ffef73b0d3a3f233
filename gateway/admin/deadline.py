"""A request deadline for the admin HTTP listener (slow-loris defence).

uvicorn 0.54 arms its keep-alive timer only after a response, and cancels it
as soon as any byte arrives, so a client that sends part of a request (or
drips one header a minute) holds its connection forever.  The protocol made
by :func:`request_deadline_protocol` closes a connection when no complete
request (request line, headers and body) arrived within ``timeout_s`` of the
connection being made or of the previous response.  The timer is off while
the application handles a request, so slow handlers are never cut off.
"""

from __future__ import annotations

import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("gateway.admin")


class _RequestDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a per-request receive deadline."""

    request_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: Any = None  # asyncio.TimerHandle while a request is awaited

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout_s, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _awaiting_request(self) -> bool:
        """True while a request (line, headers or body) is still to come."""
        if self.conn.their_state is h11.SEND_BODY:
            return True
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._awaiting_request():
            self._disarm()  # complete request received: the application has it now

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may already start a pipelined request
        if not self.transport.is_closing() and self._awaiting_request():
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._awaiting_request():
            return
        client = self.client[0] if self.client else "unknown"
        log.warning("closing admin connection from %s: no complete request within %g s", client, self.request_timeout_s)
        # abort, not close: an application still waiting for the body must
        # not get to write an answer to a half-received request
        self.transport.abort()


def request_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """The uvicorn ``http=`` protocol class with a ``timeout_s`` request deadline."""
    return type("RequestDeadlineProtocol", (_RequestDeadlineProtocol,), {"request_timeout_s": float(timeout_s)})
