"""``ecg-gateway demo``: the whole pipeline on this machine, in one command.

``ecg-gateway demo`` starts a throwaway installation (its own temporary
SQLite database and spool, the untrained demo model, a built-in MLLP receiver
standing in for the hospital system, which prints what it gets), sends
pydicom's sample 12-lead ECG through DICOM, prints the results table, the web
view's URL and a login token, and runs until Ctrl-C or SIGTERM, then removes
the installation.

``ecg-gateway demo send`` sends the sample to a gateway that is already running.
"""

from __future__ import annotations

import gc
import secrets
import shutil
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from gateway.cliconfig import config_from
from gateway.timeutil import utcnow

app = typer.Typer(
    help="Try the pipeline: a throwaway gateway with sample ECGs (`demo`), or send sample ECGs to a "
    "running gateway (`demo send`)."
)

#: Seconds the demo waits for its ECGs to be processed and their results delivered.
RESULT_TIMEOUT_S = 300.0


def send_samples(
    host: str, port: int, called_ae: str, count: int, calling_ae: str = "DEMOCART", echo: Any = print
) -> tuple[list[str], int]:
    """Send pydicom's sample ECG ``count`` times, each with new UIDs, over one
    association (pynetdicom, no DCMTK needed); ``echo`` gets one line per
    copy.  Returns (SOP Instance UIDs, how many were not answered 0x0000);
    raises ConnectionError when no association is established."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    from pynetdicom import AE

    sample = get_testdata_file("waveform_ecg.dcm")
    if not isinstance(sample, str):
        raise FileNotFoundError("pydicom's sample ECG (waveform_ecg.dcm) is not installed")
    ds = dcmread(sample)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"association with {host}:{port} ({called_ae}) was not established")
    uids, failed = [], 0
    try:
        for _ in range(count):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            failed += code != 0
            uids.append(str(ds.SOPInstanceUID))
            echo(f"{ds.SOPInstanceUID}: " + (f"0x{code:04X}" if code is not None else "no response"))
    finally:
        assoc.release()
    return uids, failed


@app.command()
def send(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(min=1, max=10000, help="How many copies (each with new UIDs).")] = 1,
    host: Annotated[str, typer.Option(help="SCP host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SCP port [default: [dicom] port].")] = 0,
    calling_ae: Annotated[str, typer.Option(help="Our AE title.")] = "DEMOCART",
) -> None:
    """Send pydicom's sample 12-lead ECG (a real Mortara recording) with new UIDs to the SCP.

    Prints the C-STORE status of each copy; exits 1 if any was not 0x0000.
    """
    cfg = config_from(ctx)
    try:
        _, failed = send_samples(host, port or cfg.dicom.port, cfg.dicom.ae_title, count, calling_ae, typer.echo)
    except ConnectionError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(1 if failed else 0)


# --- the built-in EHR ------------------------------------------------------------------------


def _field(segment: str, index: int) -> str:
    parts = segment.split("|")
    # MSH-1 is the separator itself, so MSH fields sit one place left of other segments'
    at = index - 1 if segment.startswith("MSH") else index
    return parts[at] if 0 <= at < len(parts) else ""


def summarise_oru(message: str) -> str:
    """One line about an ORU^R01: type, MSH-10, PID-3 and the EKG impressions (OBX CWE)."""
    segments = [s for s in message.split("\r") if s]
    msh = next((s for s in segments if s.startswith("MSH")), "")
    pid = next((s for s in segments if s.startswith("PID")), "")
    impressions = [
        _field(s, 5).split("^")[1] if "^" in _field(s, 5) else _field(s, 5)
        for s in segments
        if s.startswith("OBX|") and _field(s, 2) == "CWE"
    ]
    demo = any("DEMO" in _field(s, 5) for s in segments if s.startswith("OBX|"))
    return (
        f"EHR received {_field(msh, 9)} MSH-10 {_field(msh, 10)}: patient {_field(pid, 3).split('^')[0]}, "
        f"{len(segments)} segments, impressions: {', '.join(impressions) or 'none'}" + (" [demo model]" if demo else "")
    )


def ack_for(message: str) -> str:
    """ACK^R01 AA whose MSA-2 is the message's MSH-10."""
    msh = next((s for s in message.split("\r") if s.startswith("MSH")), "MSH|^~\\&")
    now = utcnow().strftime("%Y%m%d%H%M%S")
    control_id = _field(msh, 10)
    return (
        f"MSH|^~\\&|{_field(msh, 5)}|{_field(msh, 6)}|{_field(msh, 3)}|{_field(msh, 4)}|{now}||ACK^R01^ACK|"
        f"ACK{control_id}|P|2.5.1\rMSA|AA|{control_id}\r"
    )


class MllpPrinter(socketserver.ThreadingTCPServer):
    """A minimal MLLP receiver (the demo's hospital system): prints one line
    per message and answers AA.  Not for anything but the demo."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, echo: Any = print) -> None:
        self.echo = echo
        self.received = 0
        super().__init__(("127.0.0.1", 0), _MllpHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _MllpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = cast(MllpPrinter, self.server)  # the server this handler was made for
        buffer = b""
        while chunk := self.request.recv(65536):
            buffer += chunk
            while b"\x1c\r" in buffer:
                frame, buffer = buffer.split(b"\x1c\r", 1)
                message = frame.lstrip(b"\x0b").decode("utf-8", "replace")
                server.received += 1
                server.echo(summarise_oru(message))
                self.request.sendall(b"\x0b" + ack_for(message).encode() + b"\x1c\r")


# --- the throwaway installation --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(home: Path, model: Path, hl7_port: int, token: str, dicom_port: int = 0, admin_port: int = 0) -> Any:
    """The configuration of a throwaway installation under ``home`` (built-in
    defaults otherwise; the site's config file is not read)."""
    from gateway.config import Config

    return Config.model_validate(
        {
            "dicom": {"host": "127.0.0.1", "port": dicom_port or _free_port(), "min_free_disk_mb": 1},
            "storage": {"database_url": f"sqlite:///{home / 'gateway.db'}", "spool_dir": str(home / "spool")},
            "model": {"files": [str(model)], "dir": str(model.parent)},
            "process": {"poll_interval_s": 0.2},
            "hl7": {"host": "127.0.0.1", "port": hl7_port, "backoff_initial_s": 0.5, "backoff_max_s": 5},
            "admin": {"host": "127.0.0.1", "port": admin_port or _free_port(), "token": token},
            "logging": {"level": "WARNING"},
        }
    )


def _wait_for_results(cfg: Any, uids: list[str], timeout: float) -> list[dict[str, Any]] | None:
    """The results rows of ``uids`` once each is final and its ORU delivered
    (or failed); None on timeout."""
    from sqlalchemy import select

    from gateway.admin.queries import ecg_rows
    from gateway.store.db import make_engine, make_sessionmaker
    from gateway.store.models import EcgInstance

    engine = make_engine(cfg.storage.database_url)
    try:
        session_factory = make_sessionmaker(engine)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with session_factory() as s:
                ids = set(s.scalars(select(EcgInstance.id).where(EcgInstance.sop_instance_uid.in_(uids))))
                rows = [r for r in ecg_rows(s, limit=len(uids) + 100) if r["id"] in ids]
            if len(rows) == len(uids) and all(
                r["status"] in ("processed", "rejected", "failed") and r["hl7_status"] in ("delivered", "failed")
                for r in rows
            ):
                return rows
            time.sleep(0.3)
        return None
    finally:
        engine.dispose()


def _show(cfg: Any, count: int, home: Path) -> None:
    """Runs in a thread once the gateway is up: send, wait, print."""
    from gateway.admin.table import print_results as print_results_table
    from gateway.serve import admin_url

    try:
        print(
            f"\ndemo: sending {count} copies of pydicom's sample ECG (a real Mortara 12-lead recording) "
            f"to {cfg.dicom.ae_title}@127.0.0.1:{cfg.dicom.port}",
            flush=True,
        )
        uids, failed = send_samples(
            "127.0.0.1",
            cfg.dicom.port,
            cfg.dicom.ae_title,
            count,
            echo=lambda line: print(f"  C-STORE {line}", flush=True),
        )
        rows = _wait_for_results(cfg, uids, RESULT_TIMEOUT_S)
        print(flush=True)
        if rows is None:
            print(
                f"demo: not every ECG was processed and delivered within {RESULT_TIMEOUT_S:.0f} s; "
                "see `results list` below and the log above",
                flush=True,
            )
        else:
            print_results_table(rows)
        url = admin_url(cfg.admin)
        print(f"\ndemo: web view {url} (log in with token {cfg.admin.token})", flush=True)
        print(
            f"demo: API {url}api/ecgs (header 'Authorization: Bearer {cfg.admin.token}'); the table again: "
            f"ECG_GATEWAY_STORAGE__DATABASE_URL={cfg.storage.database_url} ecg-gateway results list",
            flush=True,
        )
        print(
            f"demo: the untrained demo model gives meaningless findings. Ctrl-C stops the demo and removes {home}",
            flush=True,
        )
    except Exception as exc:  # noqa: BLE001 - tell the person, keep the gateway up for a look around
        print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(min=1, max=100, help="How many copies of the sample ECG to send.")] = 3,
    dicom_port: Annotated[int, typer.Option(min=0, max=65535, help="DICOM port [default: a free one].")] = 0,
    admin_port: Annotated[int, typer.Option(min=0, max=65535, help="Web view port [default: a free one].")] = 0,
    keep: Annotated[bool, typer.Option(help="Keep the temporary installation when stopping.")] = False,
) -> None:
    """Without a sub-command: a throwaway gateway on this machine, end to end.

    Starts a temporary installation (SQLite, spool, the UNTRAINED demo model, a built-in MLLP receiver that
    prints each ORU^R01 it gets), sends pydicom's sample ECG through DICOM, prints the results, the web view's
    URL and a login token. Ctrl-C (or SIGTERM) stops it and removes the installation.
    """
    if ctx.invoked_subcommand is not None:
        return
    code = run_demo(count, dicom_port=dicom_port, admin_port=admin_port, keep=keep)
    gc.freeze()  # as `serve` does (gateway/cli.py): no seconds-long last garbage collection after TensorFlow
    raise typer.Exit(code)


def run_demo(count: int = 3, *, dicom_port: int = 0, admin_port: int = 0, keep: bool = False) -> int:
    """The whole demo; returns the exit code (0 after Ctrl-C or SIGTERM)."""
    from gateway import serve
    from gateway.infer.demo import write_demo_model
    from gateway.logs import import_tensorflow_quietly, setup_logging

    setup_logging("WARNING")  # serve sets it again; until then Keras/absl chatter stays quiet too
    signal.signal(signal.SIGTERM, _interrupt)  # until serve takes over: stop cleanly, remove the folder
    home = Path(tempfile.mkdtemp(prefix="ecg-gateway-demo-"))
    receiver = MllpPrinter(echo=lambda line: print(f"  {line}", flush=True))
    threading.Thread(target=receiver.serve_forever, name="demo-ehr", daemon=True).start()
    code = 0
    try:
        print(f"demo: a throwaway installation in {home} (removed when the demo stops)", flush=True)
        print("demo: writing the untrained demo model (seeded random weights: its findings mean nothing)", flush=True)
        import_tensorflow_quietly()
        model = write_demo_model(home / "models" / "demo.hdf5", seed=0)
        cfg = demo_config(home, model, receiver.port, secrets.token_urlsafe(18), dicom_port, admin_port)
        print(f"demo: built-in EHR (MLLP) on 127.0.0.1:{receiver.port}; starting the gateway", flush=True)
        code = serve.run(
            cfg,
            serve.COMPONENTS,
            on_started=lambda: threading.Thread(
                target=_show, args=(cfg, count, home), name="demo", daemon=True
            ).start(),
        )
    except KeyboardInterrupt:
        code = 0
    finally:
        receiver.shutdown()
        receiver.server_close()
        if keep:
            print(f"demo: stopped; the installation stays in {home}", flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)
            print(f"demo: stopped; removed {home}", flush=True)
    return code
