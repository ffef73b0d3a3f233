"""The watched folder and DICOMweb STOW-RS: instances/s through each, against
calling the storage path directly (the ceiling both share).

N copies of pydicom's waveform_ecg.dcm (each with a new SOP Instance UID) are stored

  direct: store_instance() in a loop (durable spool file + committed row each);
  stow:   dicomweb-client store_instances() in batches of --batch (in a
          subprocess, which also reads the files: its CPU time is not counted),
          against uvicorn serving the admin app in this process (multipart
          streamed into .incoming, then the same storage path);
  watch:  dropped into a watched folder (written as .part, renamed), one
          WatchFolder.poll() every 0.1 s until all are in done_dir (each file
          waits for two equal looks, so the first poll of a file never takes it).

Each on its own fresh database and spool.  Prints instances/s, the ratio to
direct, this process's CPU ms per instance, and the load average.

Usage: .venv/bin/python bench/bench_arrive.py [--n 100] [--batch 10] [--database-url URL]
       (default: a temporary SQLite file; a PostgreSQL URL: temporary databases beside it)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def copies(n: int) -> list[bytes]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = dcmread(get_testdata_file("waveform_ecg.dcm"))
    out = []
    for _ in range(n):
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


@contextlib.contextmanager
def database(base_url: str | None, folder: Path) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from gateway.store.db import upgrade

    if not base_url:
        url = f"sqlite:///{folder / f'{uuid.uuid4().hex}.db'}"
        upgrade(url)
        yield url
        return
    name = f"bench_arrive_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def timed(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_direct(url: str, tmp: Path, raws: list[bytes]) -> tuple[float, float]:
    from gateway.receive.spool import IncomingInstance, StoreContext, store_instance
    from gateway.store.db import make_engine, make_sessionmaker
    from gateway.store.spool import Spool

    engine = make_engine(url)
    ctx = StoreContext(make_sessionmaker(engine), Spool(tmp / "spool-direct"))

    def go() -> None:
        for raw in raws:
            assert store_instance(IncomingInstance.from_file(raw), ctx).status == 0

    try:
        return timed(go)
    finally:
        engine.dispose()


#: CPU seconds of the STOW client process (printed beside the server's).
CLIENT_CPU: list[float] = []


def run_stow(url: str, tmp: Path, raws: list[bytes], batch: int) -> tuple[float, float]:
    import socket

    from gateway.admin.app import create_app, make_server
    from gateway.config import Config
    from gateway.store.db import make_engine, make_sessionmaker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = Config.model_validate(
        {
            "storage": {"database_url": url, "spool_dir": str(tmp / "spool-stow")},
            "dicom": {"min_free_disk_mb": 0},
            "admin": {"host": "127.0.0.1", "port": port, "token": "bench-token"},
        }
    )
    engine = make_engine(url)
    server = make_server(create_app(cfg, make_sessionmaker(engine)), cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    files = tmp / "stow-files"
    files.mkdir()
    for i, raw in enumerate(raws):
        (files / f"{i:05d}.dcm").write_bytes(raw)
    # the client runs in its own process: this process's CPU time is the server's alone
    client = (
        "import sys, pathlib\n"
        "from pydicom import dcmread\n"
        "from dicomweb_client.api import DICOMwebClient\n"
        "paths = sorted(pathlib.Path(sys.argv[1]).iterdir())\n"
        "client = DICOMwebClient(url=sys.argv[2], headers={'Authorization': 'Bearer bench-token'})\n"
        "client.set_http_retry_params(retry=False)\n"
        "batch = int(sys.argv[3])\n"
        "for start in range(0, len(paths), batch):\n"
        "    datasets = [dcmread(p) for p in paths[start:start + batch]]\n"
        "    answer = client.store_instances(datasets=datasets)\n"
        "    assert len(answer.ReferencedSOPSequence) == len(datasets)\n"
    )

    def go() -> None:
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [sys.executable, "-c", client, str(files), f"http://127.0.0.1:{port}/dicomweb", str(batch)], check=True
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        CLIENT_CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

    try:
        return timed(go)
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


def run_watch(url: str, tmp: Path, raws: list[bytes]) -> tuple[float, float]:
    from gateway.config import IngestConfig
    from gateway.receive.spool import StoreContext
    from gateway.receive.watch import WatchFolder
    from gateway.store.db import make_engine, make_sessionmaker
    from gateway.store.spool import Spool

    engine = make_engine(url)
    ingest = IngestConfig(watch_dir=str(tmp / "in"), done_dir=str(tmp / "done"), failed_dir=str(tmp / "failed"))
    folder = WatchFolder(ingest, StoreContext(make_sessionmaker(engine), Spool(tmp / "spool-watch")))
    folder.prepare()

    def go() -> None:
        for i, raw in enumerate(raws):
            part = folder.watch_dir / f"ecg{i:05d}.dcm.part"
            part.write_bytes(raw)
            part.rename(part.with_suffix(""))
        done = 0
        while done < len(raws):
            done += sum(t.result == "accepted" for t in folder.poll())
            time.sleep(0.1)

    try:
        return timed(go)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--database-url", default=os.environ.get("ECG_GATEWAY_BENCH_DATABASE_URL", ""))
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)
    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in ("direct", "stow", "watch"):
            raws = copies(args.n)
            with database(args.database_url, tmp) as url:
                if name == "direct":
                    results[name] = run_direct(url, tmp, raws)
                elif name == "stow":
                    results[name] = run_stow(url, tmp, raws, args.batch)
                else:
                    results[name] = run_watch(url, tmp, raws)
    kind = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"{args.n} instances of {len(copies(1)[0])} bytes, {kind}; load average {load_before:.2f} -> "
        f"{os.getloadavg()[0]:.2f}"
    )
    direct_rate = args.n / results["direct"][0]
    for name, (wall, cpu) in results.items():
        rate = args.n / wall
        print(
            f"  {name:7s} {rate:8.1f} instances/s  ({rate / direct_rate:4.2f} x direct)  "
            f"CPU {1000 * cpu / args.n:6.1f} ms/instance"
            + (f" (client process: {1000 * CLIENT_CPU[0] / args.n:.1f} ms/instance)" if name == "stow" else "")
        )


if __name__ == "__main__":
    main()
