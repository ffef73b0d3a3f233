"""The optimistic commit path of store_instance: version 1 is inserted
straight away and the unique (sop_instance_uid, version) constraint decides;
these cases take the clash path (the UID is already known)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from sqlalchemy import select, update

from gateway.receive.spool import SUCCESS, IncomingInstance, StoreContext, store_instance
from gateway.store.models import RECEIVED, EcgInstance
from gateway.store.spool import Spool
from receive_helpers import ecg_bytes, spool_files

SAMPLE_UID = "1.3.6.1.4.1.20029.40.20130125105919.5407.1.1"


def _store(raw: bytes, session_factory, spool: Path):  # type: ignore[no-untyped-def]
    return store_instance(
        IncomingInstance.from_file(
            raw, calling_ae="CART1", peer_address="127.0.0.1", transfer_syntax_uid="1.2.840.10008.1.2.1"
        ),
        StoreContext(session_factory, Spool(spool)),
    )


def _rows(session_factory) -> list[EcgInstance]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return list(s.scalars(select(EcgInstance).order_by(EcgInstance.id)))


def _as_if_received_earlier(session_factory, spool: Path, row: EcgInstance) -> Path:  # type: ignore[no-untyped-def]
    """Move a stored instance under another day's folder (as a copy received
    on an earlier day sits), so a new copy's path does not exist yet."""
    earlier = spool / "2001" / "02" / "03" / Path(row.spool_path).name
    earlier.parent.mkdir(parents=True)
    shutil.move(spool / row.spool_path, earlier)
    with session_factory() as s:
        s.execute(update(EcgInstance).where(EcgInstance.id == row.id).values(spool_path=Spool(spool).stored(earlier)))
        s.commit()
    return earlier


def test_duplicate_of_an_earlier_day_is_found_and_its_new_copy_removed(
    sample_path: Path, session_factory, tmp_path: Path
) -> None:
    raw = sample_path.read_bytes()
    spool = (tmp_path / "spool").resolve()
    first = _store(raw, session_factory, spool)
    earlier = _as_if_received_earlier(session_factory, spool, _rows(session_factory)[0])
    again = _store(raw, session_factory, spool)
    assert (again.status, again.duplicate, again.ecg_id) == (SUCCESS, True, first.ecg_id)
    assert len(_rows(session_factory)) == 1
    assert spool_files(spool) == [earlier]  # the copy placed under today's folder was withdrawn
    assert hashlib.sha256(earlier.read_bytes()).hexdigest() == _rows(session_factory)[0].sha256


def test_versions_count_up_and_a_resent_version_is_its_duplicate(
    sample_path: Path, session_factory, tmp_path: Path
) -> None:
    spool = (tmp_path / "spool").resolve()
    versions = [ecg_bytes(sample_path, uid=SAMPLE_UID, changes={"StationName": name}) for name in ("1", "2", "3")]
    outcomes = [_store(raw, session_factory, spool) for raw in versions]
    assert [o.status for o in outcomes] == [SUCCESS] * 3 and not any(o.duplicate for o in outcomes)
    rows = _rows(session_factory)
    assert [(r.id, r.version, r.flags, r.patient_id, r.status) for r in rows] == [
        (outcomes[0].ecg_id, 1, [], "642341", RECEIVED),
        (outcomes[1].ecg_id, 2, ["new_version"], "642341", RECEIVED),
        (outcomes[2].ecg_id, 3, ["new_version"], "642341", RECEIVED),
    ]
    assert spool_files(spool) == sorted(spool / r.spool_path for r in rows)
    # version 2's bytes again, its earlier copy under another day: a duplicate of version 2
    earlier = _as_if_received_earlier(session_factory, spool, rows[1])
    again = _store(versions[1], session_factory, spool)
    assert (again.status, again.duplicate, again.ecg_id) == (SUCCESS, True, outcomes[1].ecg_id)
    assert len(_rows(session_factory)) == 3
    assert spool_files(spool) == sorted([earlier, spool / rows[0].spool_path, spool / rows[2].spool_path])


def test_resent_instance_whose_file_went_missing_gets_it_back(
    sample_path: Path, session_factory, tmp_path: Path
) -> None:
    """The stored row's path was free when the resend was placed (the file
    had gone, or a concurrent copy of these bytes committed first): the new
    copy is that row's file, so it stays."""
    raw = sample_path.read_bytes()
    spool = (tmp_path / "spool").resolve()
    first = _store(raw, session_factory, spool)
    [row] = _rows(session_factory)
    (spool / row.spool_path).unlink()
    again = _store(raw, session_factory, spool)
    assert (again.status, again.duplicate, again.ecg_id) == (SUCCESS, True, first.ecg_id)
    assert spool_files(spool) == [spool / row.spool_path]
    assert hashlib.sha256((spool / row.spool_path).read_bytes()).hexdigest() == row.sha256


def test_a_row_from_before_relative_paths_is_found_by_a_resend(
    sample_path: Path, session_factory, tmp_path: Path
) -> None:
    """A row that still names its file by the absolute path (written before
    migration 0009, outside the spool it converted): a resend is its
    duplicate and the file stays."""
    raw = sample_path.read_bytes()
    spool = (tmp_path / "spool").resolve()
    first = _store(raw, session_factory, spool)
    [row] = _rows(session_factory)
    with session_factory() as s:
        s.execute(update(EcgInstance).values(spool_path=str(spool / row.spool_path)))
        s.commit()
    again = _store(raw, session_factory, spool)
    assert (again.status, again.duplicate, again.ecg_id) == (SUCCESS, True, first.ecg_id)
    assert spool_files(spool) == [spool / row.spool_path]
    assert Spool(spool).check(session_factory).clean
