"""Who holds a claim, and whether that process is provably dead.

Shared by the ECG claims (``gateway.process.claim``) and the outbox claims
(``gateway.deliver.claims``): each claim records its :class:`Claimer`, and a
claim whose claimer is provably dead - same host, and that pid is not running
or is a different process now - is released at once instead of after its
lease.  Claims of other hosts still wait for their lease.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Claimer:
    """Who holds a claim, precisely enough to prove it dead later.

    ``host`` is ``hostname/boot id/pid namespace``: two claimers with the same
    ``host`` see the same process table, so a pid means the same process for
    both.  ``started`` is the process's start time in clock ticks after boot
    (field 22 of ``/proc/<pid>/stat``), which tells a reused pid apart.
    """

    host: str
    pid: int
    started: int


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of a running pid from /proc; None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": the comm may hold spaces
    return fields[0], int(fields[19])


@cache
def _host_id() -> str | None:
    """``hostname/boot id/pid namespace``, or None off Linux (no claim is ever proven dead there)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot_id}/{pid_ns}"[:200]


def this_process() -> Claimer | None:
    """The :class:`Claimer` of the calling process (None where it cannot be proven dead later)."""
    host = _host_id()
    stat = _proc_stat(os.getpid()) if host else None
    return Claimer(host, os.getpid(), stat[1]) if host and stat else None


def claimer_alive(pid: int, started: int | None) -> bool:
    """False only when provably dead: no such pid, a zombie, or another
    process under that pid (start time differs).  Call on the claimer's host."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):  # a killed process its parent has not reaped yet is a zombie
        return False
    return started is None or stat[1] == started
