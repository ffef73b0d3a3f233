"""Storage SCP throughput: the durable gateway path against a bare SCP.

N copies of pydicom's waveform_ecg.dcm (each with a new SOP Instance UID,
patched in place) are sent by DCMTK storescu

  (a) over one association, and
  (b) over 4 concurrent associations (N/4 files each),

to two servers started in this process with the same AE settings:

  ceiling: a bare pynetdicom SCP whose handler only writes
           event.encoded_dataset() to a file (no fsync, no parsing, no database);
  gateway: start_scp(): header read and checks, temp file + fsync + rename +
           folder fsync, row inserted and committed (SQLite: WAL, synchronous
           FULL; the duplicate lookup only runs on a UID clash), then 0x0000.

  fsync:   the bare SCP plus temp file + fsync + rename + folder fsync (what
           durability alone costs on this disk, no checks, no database);

Prints instances/s and MB/s for each, and gateway/ceiling as a ratio (the aim
is 0.8 or more), plus the two ratios that split the gap into file-system
durability and the gateway's own work (header, duplicate lookup, commit).
Every response must be Success or the run fails.

Also printed: this process's CPU time per instance (all its threads: the
SCP's receiving plus the handler; storescu runs in its own processes), a
figure that a busy shared machine disturbs far less than the wall clock, the
gateway's CPU ms per C-STORE beyond the bare SCP (gateway minus ceiling: what
the gateway's own receive path costs), and the load average before and after.

Usage: .venv/bin/python bench/bench_scp.py [--n 200] [--associations 4]
       [--database-url URL]   (default: a temporary SQLite file; with a
       PostgreSQL URL, a temporary database created beside it and dropped)
       [--rounds 2] [--max-pdu N] [--servers ceiling,fsync,gateway]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SAMPLE_UID = "1.3.6.1.4.1.20029.40.20130125105919.5407.1.1"


def make_copies(dest: Path, n: int) -> list[Path]:
    """``n`` copies of the sample, each with a new same-length UID."""
    from pydicom.data import get_testdata_file

    raw = Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()
    assert raw.count(SAMPLE_UID.encode()) >= 2
    files = []
    for i in range(n):
        serial = str(i + 1)
        uid = "2.25." + serial + "".join(random.choice("0123456789") for _ in range(len(SAMPLE_UID) - 5 - len(serial)))
        path = dest / f"{i:05d}.dcm"
        path.write_bytes(raw.replace(SAMPLE_UID.encode(), uid.encode()))
        files.append(path)
    return files


def send(port: int, groups: list[list[Path]]) -> tuple[float, float]:
    """Seconds to send each group over its own association, concurrently,
    and this process's CPU seconds meanwhile."""
    start, cpu = time.perf_counter(), time.process_time()
    procs = [
        subprocess.Popen(
            ["storescu", "-v", "-nh", "-aet", "BENCH", "-aec", "ECGGW", "127.0.0.1", str(port), *map(str, g)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for g in groups
    ]
    outputs = [p.communicate()[0] for p in procs]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    ok = sum(o.count("Received Store Response (Success)") for o in outputs)
    total = sum(len(g) for g in groups)
    if ok != total:
        sys.exit(f"only {ok} of {total} C-STOREs succeeded:\n{outputs[0][-2000:]}")
    return elapsed, cpu


def bare_scp(port: int, dest: Path, dicom, durable: bool = False):  # type: ignore[no-untyped-def]
    """The ceiling: same contexts and limits, the handler only writes the
    bytes.  ``durable``: also temp file + fsync + rename + folder fsync, i.e.
    the file-system cost of durability without any checks or database."""

    from pynetdicom import evt

    from gateway.receive.scp import make_ae

    counter = iter(range(10**9))

    def handle_store(event: evt.Event) -> int:
        name = dest / f"{next(counter)}.dcm"
        tmp = name.with_suffix(".tmp") if durable else name
        with open(tmp, "wb") as f:
            f.write(event.encoded_dataset())
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if durable:
            os.replace(tmp, name)
            fd = os.open(dest, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        return 0x0000

    ae = make_ae(dicom)
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])


@contextlib.contextmanager
def scratch_database(database_url: str) -> Iterator[str]:
    """A PostgreSQL URL gets a temporary database beside the one named
    (created here, dropped after), so the bench never writes into it."""
    if not database_url.startswith("postgresql"):
        yield database_url
        return
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(database_url)
    name = f"bench_scp_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="servers alternate; the best round of each counts")
    parser.add_argument("--database-url", default="")
    parser.add_argument(
        "--max-pdu", type=int, default=None, help="[dicom] max_pdu for every server (default: the config default)"
    )
    parser.add_argument(
        "--servers", default="ceiling,fsync,gateway", help="which servers to run (the ratios need all three)"
    )
    args = parser.parse_args()

    import logging
    import socket

    from gateway.config import DicomConfig, StorageConfig
    from gateway.receive.scp import start_scp
    from gateway.store.db import make_engine, make_sessionmaker, upgrade

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    logging.basicConfig(level=logging.WARNING)
    k = args.associations
    scenarios = {"1 association": 1, f"{k} associations": k}
    servers = tuple(args.servers.split(","))
    best: dict[tuple[str, str], float] = {}
    cpu_best: dict[tuple[str, str], float] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_scp_") as tmp, scratch_database(args.database_url) as scratch:
        root = Path(tmp)
        url = scratch or f"sqlite:///{root / 'gateway.db'}"
        upgrade(url)
        engine = make_engine(url)
        mb = 0.0
        for round_no in range(args.rounds):
            for scenario, n_assoc in scenarios.items():
                for server in servers:
                    run = root / f"r{round_no}_{n_assoc}_{server}"
                    (run / "in").mkdir(parents=True)
                    (run / "out").mkdir()
                    files = make_copies(run / "in", args.n)  # new UIDs every run: never a duplicate
                    mb = sum(f.stat().st_size for f in files) / 1e6
                    groups = [files[i::n_assoc] for i in range(n_assoc)]
                    port = free_port()
                    pdu = {} if args.max_pdu is None else {"max_pdu": args.max_pdu}
                    dicom = DicomConfig(
                        host="127.0.0.1", port=port, min_free_disk_mb=0, max_associations=max(10, k), **pdu
                    )
                    if server == "gateway":
                        storage = StorageConfig(database_url=url, spool_dir=str(run / "out"))
                        scp = start_scp(dicom, storage, make_sessionmaker(engine))
                        stop = scp.shutdown
                    else:
                        stop = bare_scp(port, run / "out", dicom, durable=server == "fsync").shutdown
                    try:
                        elapsed, cpu = send(port, groups)
                    finally:
                        stop()
                    key = (server, scenario)
                    best[key] = min(best.get(key, elapsed), elapsed)
                    cpu_best[key] = min(cpu_best.get(key, cpu), cpu)
        engine.dispose()

    db = "SQLite (temp file)" if not args.database_url else "temporary database at " + args.database_url.split("@")[-1]
    print(
        f"{args.n} x {mb / args.n * 1000:.0f} KB ECG (pydicom waveform_ecg.dcm), DCMTK storescu, database {db}, "
        f"best of {args.rounds} alternating rounds, max PDU {DicomConfig(**pdu).max_pdu}"
    )
    print(
        "load average (1, 5, 15 min): before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f} on {} CPUs".format(
            *load_before, *os.getloadavg(), os.cpu_count()
        )
    )
    print(f"{'scenario':<18} {'server':<8} {'inst/s':>8} {'MB/s':>7} {'CPU ms/inst':>12}")
    for scenario in scenarios:
        for server in servers:
            s = best[(server, scenario)]
            cpu_ms = cpu_best[(server, scenario)] / args.n * 1000
            print(f"{scenario:<18} {server:<8} {args.n / s:8.1f} {mb / s:7.2f} {cpu_ms:12.2f}")
        if {"ceiling", "gateway"} <= set(servers):
            beyond = (cpu_best[("gateway", scenario)] - cpu_best[("ceiling", scenario)]) / args.n * 1000
            print(f"{scenario:<18} gateway CPU beyond the bare SCP: {beyond:.2f} ms per C-STORE")
        if set(servers) == {"ceiling", "fsync", "gateway"}:
            c, f, g = (best[(srv, scenario)] for srv in ("ceiling", "fsync", "gateway"))
            print(
                f"{scenario:<18} gateway/ceiling = {c / g:.2f} (aim >= 0.80); fsync/ceiling = {c / f:.2f}; "
                f"gateway/fsync = {f / g:.2f}"
            )


if __name__ == "__main__":
    main()
