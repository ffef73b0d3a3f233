"""``ecg-gateway ingest``: archive backfill through the same storage path."""

from __future__ import annotations

import io
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from gateway.cli import app
from gateway.store.models import RECEIVED, REJECTED, EcgInstance
from receive_helpers import ecg_bytes, spool_files, write

ROOT = Path(__file__).resolve().parents[1]
NOT_DICOM = "not DICOM, Philips XML or HL7 aECG (no DICM prefix, and no data set with a SOP Class and Instance UID)"


def test_ingest_folder_summary_and_rows(db_url: str, session_factory, sample_path: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    good = ecg_bytes(sample_path)
    write(archive / "a.dcm", good)
    write(archive / "copy_of_a.DCM", good)  # same instance again: a duplicate
    write(archive / "2024" / "b.dcm", ecg_bytes(sample_path))
    write(archive / "no_waveform.dcm", ecg_bytes(sample_path, drop_waveform=True))
    write(archive / "garbage.dcm", b"not dicom at all" * 20)  # the name says DICOM, the content does not
    write(archive / "notes.txt", b"ignored: not DICOM")
    spool = tmp_path / "spool"
    env = {
        "ECG_GATEWAY_STORAGE__DATABASE_URL": db_url,
        "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(spool),
        "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "0",
    }
    result = CliRunner().invoke(
        app, ["--config", str(ROOT / "config" / "gateway.toml"), "ingest", str(archive)], env=env
    )
    assert result.exit_code == 1, result.output
    assert "4 files: 2 accepted, 1 duplicate, 1 refused; 2 skipped" in result.output
    assert f"refused {archive / 'no_waveform.dcm'}: 0xA900 no WaveformSequence" in result.output
    assert f"skipped {archive / 'garbage.dcm'}: not DICOM" in result.output
    assert f"skipped {archive / 'notes.txt'}: not DICOM" in result.output
    with session_factory() as s:
        rows = list(s.scalars(select(EcgInstance).order_by(EcgInstance.id)))
    assert sorted(r.status for r in rows) == sorted([RECEIVED, RECEIVED, REJECTED])
    assert all(r.peer_address == "ingest" for r in rows)
    assert {r.transfer_syntax_uid for r in rows if r.status == RECEIVED} == {"1.2.840.10008.1.2.1"}
    assert len(spool_files(spool)) == 2

    # the same folder again: everything is a duplicate or refused again, nothing new
    again = CliRunner().invoke(
        app, ["--config", str(ROOT / "config" / "gateway.toml"), "ingest", str(archive / "a.dcm")], env=env
    )
    assert again.exit_code == 0, again.output
    assert "1 files: 0 accepted, 1 duplicate, 0 refused" in again.output


def test_ingest_missing_path_is_exit_2(db_url: str, tmp_path: Path) -> None:
    env = {"ECG_GATEWAY_STORAGE__DATABASE_URL": db_url, "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(tmp_path / "spool")}
    result = CliRunner().invoke(
        app, ["--config", str(ROOT / "config" / "gateway.toml"), "ingest", str(tmp_path / "nope")], env=env
    )
    assert result.exit_code == 2
    assert "no such file or folder" in result.output


def test_ingest_recognises_dicom_by_content_not_name(
    db_url: str, session_factory, sample_path: Path, tmp_path: Path
) -> None:
    """A CD export: IM0001 (Part 10, no extension), IM0002 (a bare data set
    without preamble or file meta), a DICOMDIR, a text file and an empty file."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.filewriter import dcmwrite

    archive = tmp_path / "cd"
    im1 = ecg_bytes(sample_path)
    write(archive / "DICOM" / "IM0001", im1)
    bare = dcmread(io.BytesIO(ecg_bytes(sample_path)))
    bare_uid = str(bare.SOPInstanceUID)
    del bare.file_meta
    bare.preamble = None
    buf = io.BytesIO()
    dcmwrite(buf, bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    bare_bytes = buf.getvalue()
    assert bare_bytes[128:132] != b"DICM" and bare_bytes[:2] == b"\x08\x00"
    write(archive / "DICOM" / "IM0002", bare_bytes)
    write(archive / "DICOMDIR", Path(get_testdata_file("DICOMDIR")).read_bytes())  # a real one (of a CT CD)
    write(archive / "README.TXT", b"Exported by the cart\r\n")
    write(archive / "EMPTY", b"")
    env = {
        "ECG_GATEWAY_STORAGE__DATABASE_URL": db_url,
        "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(tmp_path / "spool"),
        "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "0",
    }
    result = CliRunner().invoke(
        app, ["--config", str(ROOT / "config" / "gateway.toml"), "ingest", str(archive)], env=env
    )
    assert result.exit_code == 0, result.output
    with session_factory() as s:
        ids = {r.sop_instance_uid: r.id for r in s.scalars(select(EcgInstance))}
    lines = result.output.splitlines()
    assert lines == [
        f"accepted {archive / 'DICOM' / 'IM0001'} (DICOM, ecg id {min(ids.values())})",
        f"accepted {archive / 'DICOM' / 'IM0002'} (DICOM, ecg id {ids[bare_uid]})",
        f"skipped {archive / 'DICOMDIR'}: DICOMDIR (an index of the other files, not an ECG)",
        f"skipped {archive / 'EMPTY'}: {NOT_DICOM}",
        f"skipped {archive / 'README.TXT'}: {NOT_DICOM}",
        "2 files: 2 accepted, 0 duplicate, 0 refused; 3 skipped",
    ], result.output
    with session_factory() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(EcgInstance))}
    assert {r.status for r in rows.values()} == {RECEIVED}
    stored = rows[bare_uid]
    assert stored.transfer_syntax_uid == "1.2.840.10008.1.2"  # the bare data set's own encoding
    spooled = (
        Path(stored.spool_path) if Path(stored.spool_path).is_absolute() else tmp_path / "spool" / stored.spool_path
    ).read_bytes()
    assert spooled[128:132] == b"DICM" and spooled.endswith(bare_bytes)  # the data set's bytes unchanged
    assert str(dcmread(io.BytesIO(spooled)).file_meta.MediaStorageSOPInstanceUID) == bare_uid
