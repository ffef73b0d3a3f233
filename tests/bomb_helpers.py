"""Oversize data sets built from pydicom's real 12-lead ECG: a deflate bomb
(a Deflated Explicit VR Little Endian file of about a megabyte that inflates
to a gigabyte) and a plain oversize file (a large private OB element), and a
pynetdicom sender that streams a file without decoding it, as an attacker's
script would."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

MIB = 1024 * 1024
ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
_CREATOR = struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 8) + b"BOMBTEST"  # private creator, after WaveformSequence


def _ob_header(length: int) -> bytes:
    return struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, length)


def _meta_and_body(sample_path: Path, transfer_syntax: str, uid: str) -> tuple[bytes, bytes]:
    """The sample's Part 10 header (preamble + file meta naming
    ``transfer_syntax``) and its data set in Explicit VR LE, with ``uid``."""
    ds = dcmread(sample_path)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    raw = out.getvalue()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    body = raw[fp.tell() :]
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    meta = io.BytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return meta.getvalue(), body


def bomb_stream(prefix: bytes, zeros_mib: int, *, final_block: bool = True) -> bytes:
    """A raw deflate stream of ``prefix`` and ``zeros_mib`` MiB of zeros,
    built without deflating them all: one MiB of zeros is deflated once
    after a full flush (so it refers to nothing before it) and its bytes are
    repeated.  1024 MiB -> ~1.1 MB."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflater.compress(prefix) + deflater.flush(zlib.Z_FULL_FLUSH)
    block = deflater.compress(bytes(MIB)) + deflater.flush(zlib.Z_FULL_FLUSH)
    tail = deflater.flush() if final_block else b""
    return head + block * zeros_mib + tail


def deflated_bomb(sample_path: Path, inflated_mib: int, *, uid: str | None = None, final_block: bool = True) -> bytes:
    """The sample as Deflated Explicit VR LE plus a private OB of
    ``inflated_mib`` MiB of zeros: about 1.1 MB for 1024 MiB."""
    meta, body = _meta_and_body(sample_path, DeflatedExplicitVRLittleEndian, uid or generate_uid())
    return meta + bomb_stream(body + _CREATOR + _ob_header(inflated_mib * MIB), inflated_mib, final_block=final_block)


def oversize_file(sample_path: Path, path: Path, extra_mib: int, *, uid: str | None = None) -> Path:
    """The sample (Explicit VR LE) plus a private OB of ``extra_mib`` MiB of
    zeros, written as a sparse file (cheap to make, read at full speed)."""
    meta, body = _meta_and_body(sample_path, ExplicitVRLittleEndian, uid or generate_uid())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(meta + body + _CREATOR + _ob_header(extra_mib * MIB))
        f.truncate(f.tell() + extra_mib * MIB)
    return path


@dataclass
class Sent:
    """What a sender saw: the C-STORE status (None: no response, e.g. the
    association was aborted) and the seconds from A-ASSOCIATE-RQ to the end."""

    status: int | None
    seconds: float
    error: str = ""
    started: float = 0.0  #: wall clock (time.time()) at the A-ASSOCIATE-RQ, to compare with log lines


def _send(port: int, path: Path, aet: str, aec: str) -> Sent:
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are: no decoding, no inflation
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for syntax in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ae.add_requested_context(ECG_12_LEAD, [syntax])
    started, t0 = time.time(), time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    if not assoc.is_established:
        return Sent(None, time.monotonic() - t0, "association not established", started)
    status, error = None, ""
    try:
        response = assoc.send_c_store(path)
        status = response.get("Status")
    except Exception as exc:  # noqa: BLE001 - the SCP closing the connection mid-send
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - t0
    if assoc.is_established:
        assoc.release()
    else:
        assoc.abort()
    return Sent(status, seconds, error, started)


def start_sender(port: int, path: Path, *, aet: str = "BOMBER", aec: str = "ECGGW") -> subprocess.Popen:
    """C-STORE ``path`` as it is on disk from a separate process (pynetdicom
    queues a whole data set in the sender's memory, which must not count as
    the gateway's), proposing Explicit and Deflated Explicit VR LE in
    separate presentation contexts.  :func:`sender_result` reads the outcome."""
    return subprocess.Popen(
        [sys.executable, __file__, str(port), str(path), aet, aec],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def sender_result(proc: subprocess.Popen, timeout: float = 120) -> Sent:
    out, _ = proc.communicate(timeout=timeout)
    return Sent(**json.loads(out.strip().splitlines()[-1]))


def send_file(port: int, path: Path, *, aet: str = "BOMBER", aec: str = "ECGGW") -> Sent:
    """:func:`start_sender` and wait for it."""
    return sender_result(start_sender(port, path, aet=aet, aec=aec))


if __name__ == "__main__":
    sent = _send(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    print(json.dumps(dataclasses.asdict(sent)))
