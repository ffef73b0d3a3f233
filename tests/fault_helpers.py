"""Helpers for the soak and fault-injection tests: a TCP proxy that can
refuse connections on demand, /proc samplers, ECG copies and storescu
outcome parsing.  Everything here drives real parts (serve, storescu, the
npm receiver, PostgreSQL); only the network path to the database is cut.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from gateway.store.models import EcgInstance, Hl7Message


class TcpProxy:
    """A tiny asyncio TCP forwarder ``127.0.0.1:<port> -> target``.

    ``down()`` closes the listening socket *and* every forwarded connection,
    so clients see exactly what a stopped database server gives them: reset
    connections, then "connection refused".  ``up()`` listens again on the
    same port.  Runs its own event loop in a daemon thread.
    """

    def __init__(self, target_host: str, target_port: int, port: int) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def _call(self, coro) -> object:  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        finally:
            self._writers -= {client_w, server_w}

    async def _up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()  # RST, as a crashed server would
        self._writers.clear()

    def up(self) -> None:
        self._call(self._up())

    def down(self) -> None:
        self._call(self._down())

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# -- /proc ---------------------------------------------------------------------


def proc_status_kb(pid: int, field_name: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class ResourceSampler:
    """Samples (seconds since start, RSS kB, open fds) of one process every
    ``interval`` seconds in a thread, until :meth:`stop`."""

    pid: int
    interval: float = 1.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(
                    (time.monotonic() - self._t0, proc_status_kb(self.pid, "VmRSS"), open_fds(self.pid))
                )
            except (OSError, KeyError):
                return  # the process is gone
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def growth(self, warmup_fraction: float = 0.3) -> dict[str, float]:
        """RSS (MB) and fds: the median of the first window after warm-up
        against the median of the last window (each a fifth of the run)."""
        after = self.samples[int(len(self.samples) * warmup_fraction) :]
        k = max(len(after) // 5, 1)
        first, last = after[:k], after[-k:]
        med = lambda rows, i: statistics.median(r[i] for r in rows)  # noqa: E731
        return {
            "rss_start_mb": med(first, 1) / 1024,
            "rss_end_mb": med(last, 1) / 1024,
            "rss_max_mb": max(r[1] for r in self.samples) / 1024,
            "fds_start": med(first, 2),
            "fds_end": med(last, 2),
            "fds_max": max(r[2] for r in self.samples),
            "samples": len(self.samples),
        }


# -- ECGs and storescu -----------------------------------------------------------


def ecg_copies(sample_path: Path, folder: Path, n: int, prefix: str = "ecg") -> dict[Path, tuple[str, str]]:
    """``n`` copies of the sample with fresh SOP/Series/Study UIDs:
    {path: (SOP Instance UID, Study Instance UID)}."""
    from pydicom import dcmread

    import ecg_variants as v

    folder.mkdir(parents=True, exist_ok=True)
    sample = dcmread(sample_path)
    out = {}
    for i in range(n):
        ds = v.new_uids(sample)
        out[v.save(ds, folder / f"{prefix}{i:05d}.dcm")] = (str(ds.SOPInstanceUID), str(ds.StudyInstanceUID))
    return out


_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def store_outcomes(storescu_output: str) -> dict[str, str]:
    """{file: response text} from ``storescu -v`` output ("Success",
    "Refused: OutOfResources", ...); files without a response are absent."""
    out: dict[str, str] = {}
    current = ""
    for line in storescu_output.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif m := _RESPONSE.search(line):
            out[current] = m.group(1)
    return out


def start_storescu(files: Iterable[Path], port: int, aet: str = "TESTCART") -> subprocess.Popen:
    return subprocess.Popen(
        ["storescu", "-v", "-aet", aet, "-aec", "ECGGW", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# -- database ------------------------------------------------------------------


def ecg_status_counts(session_factory) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return dict(s.execute(select(EcgInstance.status, func.count()).group_by(EcgInstance.status)).all())


def hl7_status_counts(session_factory) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return dict(s.execute(select(Hl7Message.status, func.count()).group_by(Hl7Message.status)).all())


def spool_files(spool: Path) -> list[Path]:
    """Stored instance files (not temp files, not the rejected quarantine)."""
    if not spool.is_dir():
        return []
    return sorted(p for p in spool.rglob("*.dcm") if ".incoming" not in p.parts and "rejected" not in p.parts)


def incoming_files(spool: Path) -> list[Path]:
    folder = spool / ".incoming"
    return sorted(folder.iterdir()) if folder.is_dir() else []
