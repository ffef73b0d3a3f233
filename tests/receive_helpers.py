"""Helpers for the receive tests: sample variants built from pydicom's real
ECG, and DCMTK storescu/echoscu driven as the cart."""

from __future__ import annotations

import io
import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid

ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_32BIT_ECG = "1.2.840.10008.5.1.4.1.1.9.1.4"
HEMODYNAMIC = "1.2.840.10008.5.1.4.1.1.9.2.1"
STATUS_RE = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
SENDING_RE = re.compile(r"Sending file: (.+)$")


def ecg_bytes(
    sample_path: Path,
    *,
    uid: str | None = None,
    sop_class: str | None = None,
    transfer_syntax: str | None = None,
    drop_waveform: bool = False,
    patient_id: str | None = None,
    changes: dict[str, Any] | None = None,
) -> bytes:
    """The sample re-encoded with the given changes (a fresh valid UID when
    ``uid`` is None); ``changes`` sets top-level attributes by keyword."""
    ds = dcmread(sample_path)
    new_uid = uid if uid is not None else generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs are the point of some variants
        ds.SOPInstanceUID = new_uid
        ds.file_meta.MediaStorageSOPInstanceUID = new_uid
    if sop_class:
        ds.SOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPClassUID = sop_class
    if transfer_syntax:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    if drop_waveform:
        del ds.WaveformSequence
    if patient_id is not None:
        ds.PatientID = patient_id
    for keyword, value in (changes or {}).items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs are the point of some variants
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def storescu(
    port: int,
    files: list[Path],
    *,
    called: str = "ECGGW",
    calling: str = "CART1",
    extra: list[str] | None = None,
    timeout: float = 60,
) -> tuple[list[tuple[str, int]], str]:
    """Send ``files`` over one association; returns [(file, DIMSE status)]
    for each response, and the whole output (storescu exits 0 even when a
    store failed, so the status printed with -d is what counts)."""
    cmd = ["storescu", "-d", "-nh", "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port)]
    proc = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    return parse_statuses(output), output


def parse_statuses(output: str) -> list[tuple[str, int]]:
    """(file, status) for each C-STORE response in storescu -d output."""
    results: list[tuple[str, int]] = []
    current = None
    for line in output.splitlines():
        sent = SENDING_RE.search(line)
        if sent:
            current = sent.group(1).strip()
            continue
        status = STATUS_RE.search(line)
        if status and current is not None:
            results.append((current, int(status.group(1), 16)))
            current = None
    return results


def spool_files(spool_dir: Path) -> list[Path]:
    """Stored instances (quarantined rejections and temp files excluded)."""
    if not spool_dir.exists():
        return []
    return sorted(
        p
        for p in spool_dir.rglob("*")
        if p.is_file() and not {"rejected", ".incoming"} & set(p.relative_to(spool_dir).parts)
    )


def same_length_uid(template: str, serial: int) -> str:
    """A valid UID (2.25 root) of ``template``'s length, unique per ``serial``."""
    import random

    digits = len(template) - len("2.25.")
    return (
        "2.25." + str(serial + 1) + "".join(random.choice("0123456789") for _ in range(digits - len(str(serial + 1))))
    )


def copies_with_new_uids(raw: bytes, uid: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` copies of a file, each with a new SOP Instance UID patched
    in place (same length, so every element length stays right): cheap
    enough to build hundreds for a burst or a benchmark."""
    assert raw.count(uid.encode()) >= 2, "UID expected in file meta and data set"
    out = []
    for serial in range(count):
        new = same_length_uid(uid, serial)
        out.append((new, raw.replace(uid.encode(), new.encode())))
    return out
