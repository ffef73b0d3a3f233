"""``ecg-gateway ingest``: archive backfill through the same storage path."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from gateway.cli import app
from gateway.store.models import RECEIVED, REJECTED, EcgInstance
from receive_helpers import ecg_bytes, spool_files, write

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_folder_summary_and_rows(db_url: str, session_factory, sample_path: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    good = ecg_bytes(sample_path)
    write(archive / "a.dcm", good)
    write(archive / "copy_of_a.DCM", good)  # same instance again: a duplicate
    write(archive / "2024" / "b.dcm", ecg_bytes(sample_path))
    write(archive / "no_waveform.dcm", ecg_bytes(sample_path, drop_waveform=True))
    write(archive / "garbage.dcm", b"not dicom at all" * 20)
    write(archive / "notes.txt", b"ignored: not .dcm")
    spool = tmp_path / "spool"
    env = {
        "ECG_GATEWAY_STORAGE__DATABASE_URL": db_url,
        "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(spool),
        "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "0",
    }
    result = CliRunner().invoke(app, ["--config", str(ROOT / "config" / "gateway.toml"), "ingest", str(archive)], env=env)
    assert result.exit_code == 1, result.output
    assert "5 files: 2 accepted, 1 duplicate, 2 refused" in result.output
    assert f"refused {archive / 'no_waveform.dcm'}: 0xA900 no WaveformSequence" in result.output
    assert f"refused {archive / 'garbage.dcm'}: 0xC000 " in result.output
    with session_factory() as s:
        rows = list(s.scalars(select(EcgInstance).order_by(EcgInstance.id)))
    assert sorted(r.status for r in rows) == sorted([RECEIVED, RECEIVED, REJECTED, REJECTED])
    assert all(r.peer_address == "ingest" for r in rows)
    assert {r.transfer_syntax_uid for r in rows if r.status == RECEIVED} == {"1.2.840.10008.1.2.1"}
    assert len(spool_files(spool)) == 2

    # the same folder again: everything is a duplicate or refused again, nothing new
    again = CliRunner().invoke(app, ["--config", str(ROOT / "config" / "gateway.toml"), "ingest", str(archive / "a.dcm")], env=env)
    assert again.exit_code == 0, again.output
    assert "1 files: 0 accepted, 1 duplicate, 0 refused" in again.output


def test_ingest_missing_path_is_exit_2(db_url: str, tmp_path: Path) -> None:
    env = {"ECG_GATEWAY_STORAGE__DATABASE_URL": db_url, "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(tmp_path / "spool")}
    result = CliRunner().invoke(app, ["--config", str(ROOT / "config" / "gateway.toml"), "ingest", str(tmp_path / "nope")], env=env)
    assert result.exit_code == 2
    assert "no such file or folder" in result.output
