"""The watched folder and DICOMweb STOW-RS end to end: `ecg-gateway serve`
(untrained demo model) takes files from its folder and instances from
dicomweb-client, processes them and delivers each ORU to the npm MLLP
receiver.

One database (SQLite): the watcher's and STOW's rows are written by the
same store code as a C-STORE's, tested on both databases in-process
(test_watch.py, test_stow.py) and through serve on PostgreSQL in
test_e2e.py; what is proven here is the two doors of the running process."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from sqlalchemy import func, select

from conftest import free_port
from deliver_helpers import receiver
from e2e_helpers import gateway_env, start_serve, stop, wait_for_port, wait_until
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import PROCESSED, REJECTED, EcgInstance, Hl7Message
from receive_helpers import ecg_bytes

INPUTS = Path(__file__).parent / "fixtures" / "inputs"
FINAL = (PROCESSED, REJECTED, "failed")


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # see the module docstring
def test_folder_and_stow_to_ehr(db_url: str, tmp_path: Path, demo_model: Path, sample_path: Path) -> None:
    watch, done, failed = tmp_path / "in", tmp_path / "done", tmp_path / "failed"
    dicom_port, admin_port, hl7_port = free_port(), free_port(), free_port()
    env = gateway_env(
        tmp_path,
        db_url,
        demo_model,
        dicom_port,
        admin_port,
        ECG_GATEWAY_HL7__ENABLED="true",
        ECG_GATEWAY_HL7__PORT=str(hl7_port),
        ECG_GATEWAY_INGEST__WATCH_DIR=str(watch),
        ECG_GATEWAY_INGEST__DONE_DIR=str(done),
        ECG_GATEWAY_INGEST__FAILED_DIR=str(failed),
        ECG_GATEWAY_INGEST__POLL_INTERVAL_S="0.3",
    )
    token = env["ECG_GATEWAY_ADMIN__TOKEN"]
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    folder_dicom = ecg_bytes(sample_path)
    philips = (INPUTS / "philips" / "ad4d3d80-d165_1-04_orig.xml").read_bytes()
    refused = ecg_bytes(sample_path, drop_waveform=True)
    web = [dcmread(io.BytesIO(ecg_bytes(sample_path))) for _ in range(2)]
    log = tmp_path / "serve.log"
    with receiver(hl7_port, tmp_path / "hl7.jsonl") as ehr:
        proc = start_serve(env, log)
        try:
            wait_for_port(admin_port, proc=proc)
            assert "gateway started: scp, watch, worker, hl7, admin" in log.read_text()
            # the folder: written under a temporary name, renamed when complete (as the README asks)
            for name, data in (("cart1.dcm", folder_dicom), ("PageWriter_export", philips), ("bad.dcm", refused)):
                (watch / f"{name}.part").write_bytes(data)
                (watch / f"{name}.part").rename(watch / name)
            client = DICOMwebClient(
                url=f"http://127.0.0.1:{admin_port}/dicomweb", headers={"Authorization": f"Bearer {token}"}
            )
            client.set_http_retry_params(retry=False)
            answer = client.store_instances(datasets=web)
            assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [
                str(ds.SOPInstanceUID) for ds in web
            ]

            def all_final() -> bool:
                with sf() as s:
                    return s.scalar(select(func.count()).where(EcgInstance.status.in_(FINAL))) == 5

            wait_until(all_final, 240, what="every ECG final", procs=[proc])
            wait_until(lambda: len(ehr.messages()) >= 4, 90, what="an ORU for each processed ECG", procs=[proc])
            wait_until(
                lambda: sorted(p.name for p in done.iterdir()) == ["PageWriter_export", "cart1.dcm"],
                30,
                what="the stored files in done_dir",
            )
        finally:
            assert stop(proc) == 0, log.read_text()[-3000:]
        received = ehr.messages()
    with sf() as s:
        rows = list(s.scalars(select(EcgInstance)))
        delivered = s.scalar(select(func.count()).where(Hl7Message.status == "delivered"))
    engine.dispose()
    by_source = sorted((r.peer_address, r.source_format, r.status) for r in rows)
    assert by_source == sorted(
        [
            ("watch", "dicom", PROCESSED),
            ("watch", "philips", PROCESSED),
            ("watch", "dicom", REJECTED),
            ("127.0.0.1", "dicom", PROCESSED),
            ("127.0.0.1", "dicom", PROCESSED),
        ]
    ), [(r.peer_address, r.error) for r in rows]
    assert sorted(p.name for p in failed.iterdir()) == ["bad.dcm", "bad.dcm.reason.txt"]
    assert "refused: no WaveformSequence" in (failed / "bad.dcm.reason.txt").read_text()
    assert list(watch.iterdir()) == []
    # each processed ECG's ORU reached the npm receiver (the refused one's too: a rejection notice, if any)
    assert delivered == len(received) >= 4
    payloads = "\n".join(str(m) for m in received)
    for row in rows:
        if row.status == PROCESSED and row.study_instance_uid:
            assert str(row.study_instance_uid) in payloads
