"""The physician over-read (gateway.admin.overread): the pure state helpers, and
confirmations on the real database (SQLite and PostgreSQL) with their outbox rows,
PACS rows, audit rows, API row values and the worklist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import hl7
import pytest
from sqlalchemy import select

from admin_helpers import audit_rows, seed
from gateway.admin.overread import (
    AUDIT_CONFIRM,
    AUDIT_EDIT,
    ConfirmError,
    Reader,
    changes_of,
    clean_statements,
    confirm,
    confirmation_state,
    next_result_status,
    obr25_of,
    ordered_findings,
    outcome_of,
)
from gateway.admin.queries import count_worklist, ecg_detail, ecg_rows, wards, worklist_rows
from gateway.config import Config
from gateway.report.people import split_name
from gateway.store.models import Confirmation, EcgInstance, Hl7Message, PacsMessage

READER = Reader(username="arossi", full_name="Anna Rossi", hl7_id="D123", user_id=7)
T1 = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)


def cfg(tmp_path, pacs: bool = False) -> Config:
    return Config.model_validate(
        {
            "storage": {"spool_dir": str(tmp_path / "spool")},
            "hl7": {"interpreter_authority": "HOSP"},
            "pacs": {"enabled": pacs},
        }
    )


# --- pure helpers -----------------------------------------------------------------------------------


def test_findings_are_ordered_deduplicated_and_unknown_codes_refused():
    assert ordered_findings(["AF", "1dAVb", "AF"]) == ["1dAVb", "AF"]
    assert ordered_findings([]) == []
    with pytest.raises(ConfirmError, match="unknown finding code 'VT'") as err:
        ordered_findings(["AF", "VT"])
    assert err.value.status == 422


def test_statements_are_stripped_and_bounded():
    assert clean_statements(["  Sinus rhythm ", "", "   "]) == ["Sinus rhythm"]
    with pytest.raises(ConfirmError, match="longer than 500"):
        clean_statements(["x" * 501])
    with pytest.raises(ConfirmError, match="more than 20"):
        clean_statements([f"s{i}" for i in range(21)])
    with pytest.raises(ConfirmError, match="must be text"):
        clean_statements([3])


def test_outcome_is_corrected_only_when_the_findings_differ():
    assert outcome_of(["AF"], ["AF"]) == "confirmed"
    assert outcome_of(["AF", "SB"], ["SB", "AF"]) == "confirmed"
    assert outcome_of(["AF"], []) == "corrected"
    assert outcome_of([], ["RBBB"]) == "corrected"


def test_changes_against_the_ai_and_the_previous_version():
    first = SimpleNamespace(findings=["RBBB"], statements=["Sinus rhythm"], comment=None)
    assert changes_of(["AF"], first, None) == {"vs_ai": {"added": ["RBBB"], "removed": ["AF"]}, "vs_previous": None}
    second = SimpleNamespace(findings=["RBBB", "AF"], statements=["Sinus rhythm", "Old MI"], comment="see prior")
    assert changes_of(["AF"], second, first) == {
        "vs_ai": {"added": ["RBBB"], "removed": []},
        "vs_previous": {
            "added": ["AF"],
            "removed": [],
            "statements_added": ["Old MI"],
            "statements_removed": [],
            "comment_changed": True,
        },
    }


@pytest.mark.parametrize(
    ("sent", "earlier", "expected"),
    [
        ([], 0, "F"),  # HL7 off or nothing sent: the first final
        (["P"], 0, "F"),  # the AI read went as preliminary: the reader completes it
        (["P", None], 0, "F"),  # an unreadable payload says nothing
        (["F"], 0, "C"),  # the site sends AI reads as final: the reader corrects it
        (["C"], 0, "C"),  # a corrected version of the instance went out
        (["P"], 1, "C"),  # an edit of a confirmation corrects the final one
    ],
)
def test_result_status_of_a_confirmation(sent, earlier, expected):
    assert next_result_status(sent, earlier) == expected


def test_obr25_is_read_from_a_stored_message():
    assert obr25_of("MSH|^~\\&|A\rOBR|1|||||||||||||||||||||||EC|P|||") == "P"
    assert obr25_of("MSH|^~\\&|A\rPID|1") is None
    assert obr25_of(None) is None


def test_state_of_an_unconfirmed_and_a_confirmed_ecg():
    assert confirmation_state(None) == {
        "status": "unconfirmed",
        "by": None,
        "by_name": None,
        "at": None,
        "findings": None,
        "version": None,
    }
    row = SimpleNamespace(
        outcome="corrected", username="arossi", full_name="Anna Rossi", created_at=T1, findings=["RBBB"], version=2
    )
    assert confirmation_state(row) == {
        "status": "corrected",
        "by": "arossi",
        "by_name": "Anna Rossi",
        "at": "2026-02-01T09:30:00+00:00",
        "findings": ["RBBB"],
        "version": 2,
    }


@pytest.mark.parametrize(
    ("full", "expected"),
    [
        ("Anna Maria Rossi", ("Rossi", "Anna Maria")),
        ("Rossi, Anna", ("Rossi", "Anna")),
        ("  Rossi  ", ("Rossi", "")),
        (None, ("arossi", "")),
        ("", ("arossi", "")),
    ],
)
def test_reader_names_for_hl7(full, expected):
    assert split_name(full, "arossi") == expected


# --- on the database --------------------------------------------------------------------------------


@pytest.fixture
def seeded(session_factory, sample_path, tmp_path):
    return seed(session_factory, sample_path, tmp_path / "spool")


def _confirm(session_factory, ecg_id, config, reader=READER, **kw):
    kw.setdefault("findings", [])
    with session_factory() as s, s.begin():
        row = confirm(s, s.get(EcgInstance, ecg_id), reader, config, actor=reader.username, **kw)
        return row.id


def _payload(session_factory, message_id):
    with session_factory() as s:
        return s.get(Hl7Message, message_id).payload


def test_a_confirmation_is_stored_with_its_oru_and_audit_row(session_factory, seeded, tmp_path):
    config = cfg(tmp_path)
    e1 = seeded["e1"]  # the AI said AF
    cid = _confirm(session_factory, e1, config, findings=["RBBB"], statements=["Sinus rhythm"], comment="ok", now=T1)
    with session_factory() as s:
        c = s.get(Confirmation, cid)
        assert (c.version, c.username, c.full_name, c.hl7_id, c.user_id) == (1, "arossi", "Anna Rossi", "D123", 7)
        assert (c.findings, c.statements, c.comment, c.outcome, c.result_status) == (
            ["RBBB"],
            ["Sinus rhythm"],
            "ok",
            "corrected",
            "F",
        )
        assert c.changes == {"vs_ai": {"added": ["RBBB"], "removed": ["AF"]}, "vs_previous": None}
        # the AI's own output is untouched
        assert s.get(EcgInstance, e1).prediction.findings == ["AF"]
        message_id = c.hl7_message_id
    msg = hl7.parse(_payload(session_factory, message_id).replace("\r", "\n").replace("\n", "\r"))
    assert str(msg.segment("OBR")[25]) == "F"
    interpreter = msg.segment("OBR")[32]
    assert [str(interpreter[0][0][i]) for i in (0, 1, 2, 8)] == ["D123", "Rossi", "Anna", "HOSP"]
    assert str(interpreter[0][1]) == "20260201093000+0000"
    impressions = [o for o in msg.segments("OBX") if str(o[3][0][0]) == "8601-7"]
    assert [str(o[5]) for o in impressions] == ["59118001^Right bundle branch block^SCT", "Sinus rhythm"]
    assert all(str(o[16][0][0]) == "D123" for o in impressions)
    ai = [o for o in msg.segments("OBX") if str(o[3][0][0]) == "AI_FINDING"]
    assert [str(o[5]) for o in ai] == ["164889003^Atrial fibrillation^SCT"]
    assert {str(o[11]) for o in msg.segments("OBX")} == {"F"}
    rows = [r for r in audit_rows(session_factory) if r.action in (AUDIT_CONFIRM, AUDIT_EDIT)]
    assert [(r.actor, r.action, r.target) for r in rows] == [("arossi", AUDIT_CONFIRM, f"ecg:{e1}")]
    assert rows[0].detail["findings"] == ["RBBB"] and rows[0].detail["result_status"] == "F"


def test_every_version_is_kept_and_an_edit_is_a_correction(session_factory, seeded, tmp_path):
    config = cfg(tmp_path)
    e1 = seeded["e1"]
    _confirm(session_factory, e1, config, findings=["AF"], now=T1)
    other = Reader(username="bverdi", full_name="Verdi, Bruno", hl7_id="D456")
    _confirm(session_factory, e1, config, other, findings=["AF", "SB"], statements=["Slow"], now=T1 + timedelta(1))
    with session_factory() as s:
        versions = list(s.scalars(select(Confirmation).where(Confirmation.ecg_id == e1).order_by(Confirmation.version)))
        assert [(c.version, c.username, c.outcome, c.result_status) for c in versions] == [
            (1, "arossi", "confirmed", "F"),
            (2, "bverdi", "corrected", "C"),
        ]
        assert versions[1].changes["vs_previous"] == {
            "added": ["SB"],
            "removed": [],
            "statements_added": ["Slow"],
            "statements_removed": [],
            "comment_changed": False,
        }
        second = versions[1].hl7_message_id
    msg = hl7.parse(_payload(session_factory, second))
    assert str(msg.segment("OBR")[25]) == "C"
    assert [str(msg.segment("OBR")[32][0][0][i]) for i in (0, 1, 2)] == ["D456", "Verdi", "Bruno"]
    # the filler order number of the P, F and C messages is one
    with session_factory() as s:
        payloads = [m.payload for m in s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == e1))]
    fillers = {str(hl7.parse(p).segment("OBR")[3]) for p in payloads if "OBR|" in p}
    assert len(fillers) == 1
    actions = [r.action for r in audit_rows(session_factory) if r.action in (AUDIT_CONFIRM, AUDIT_EDIT)]
    assert actions == [AUDIT_CONFIRM, AUDIT_EDIT]
    with session_factory() as s:
        detail = ecg_detail(s, str(e1))
    assert [c["version"] for c in detail["confirmations"]] == [1, 2]
    assert detail["confirmation"]["status"] == "corrected" and detail["confirmation"]["by"] == "bverdi"


def test_a_final_ai_result_is_corrected_by_the_first_confirmation(session_factory, seeded, tmp_path):
    """A site sending AI reads as final ([hl7] ai_result_status = "F"): OBR-25 = C."""
    e1 = seeded["e1"]
    with session_factory() as s, s.begin():
        m = s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == e1)).one()
        m.payload = "MSH|^~\\&|ECGGW\rOBR|1|||||||||||||||||||||||EC|F"
    _confirm(session_factory, e1, cfg(tmp_path), findings=["AF"])
    with session_factory() as s:
        assert s.scalars(select(Confirmation.result_status)).one() == "C"


@pytest.mark.parametrize("key", ["e3", "e4", "e5"])
def test_an_ecg_without_an_ai_result_cannot_be_confirmed(session_factory, seeded, tmp_path, key):
    with pytest.raises(ConfirmError, match="no AI result") as err:
        _confirm(session_factory, seeded[key], cfg(tmp_path), findings=["AF"])
    assert err.value.status == 409
    with session_factory() as s:
        assert s.scalars(select(Confirmation)).all() == []


def test_bad_input_changes_nothing(session_factory, seeded, tmp_path):
    for kw, status in [({"findings": ["XX"]}, 422), ({"comment": "c" * 2001}, 422), ({"statements": ["s" * 501]}, 422)]:
        with pytest.raises(ConfirmError) as err:
            _confirm(session_factory, seeded["e1"], cfg(tmp_path), **kw)
        assert err.value.status == status
    with pytest.raises(ConfirmError) as err:
        _confirm(session_factory, seeded["e1"], cfg(tmp_path), Reader(username=""), findings=[])
    assert err.value.status == 403
    with session_factory() as s:
        assert s.scalars(select(Confirmation)).all() == []
        assert len(s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == seeded["e1"])).all()) == 1


def test_pacs_objects_are_queued_again_for_the_confirmation(session_factory, seeded, tmp_path):
    cid = _confirm(session_factory, seeded["e1"], cfg(tmp_path, pacs=True), findings=["AF"])
    with session_factory() as s:
        rows = s.scalars(select(PacsMessage).where(PacsMessage.ecg_id == seeded["e1"])).all()
        assert sorted((r.kind, r.confirmation_id) for r in rows) == [("pdf", cid), ("sr", cid)]


def test_rows_say_confirmation_and_the_worklist_leaves_confirmed_ecgs(session_factory, seeded, tmp_path):
    e1, e2, e6 = seeded["e1"], seeded["e2"], seeded["e6"]
    with session_factory() as s, s.begin():
        s.get(EcgInstance, e1).ward, s.get(EcgInstance, e2).ward = "Cardiology", "ICU"
        s.get(EcgInstance, e6).device_model = "ELI 250c"
    with session_factory() as s:
        assert [r["id"] for r in worklist_rows(s)] == [e1, e2, e6]  # processed only, oldest first
        assert count_worklist(s) == 3
        assert [r["id"] for r in worklist_rows(s, ward="ICU")] == [e2]
        assert [r["id"] for r in worklist_rows(s, device="eli 250")] == [e6]
        assert [r["id"] for r in worklist_rows(s, device="cart1")] == [e1, e2, e6]  # the calling AE title
        assert [r["id"] for r in worklist_rows(s, finding="RBBB")] == [e2]
        assert wards(s) == ["Cardiology", "ICU"]
        assert {r["confirmation"]["status"] for r in ecg_rows(s)} == {"unconfirmed"}
    _confirm(session_factory, e1, cfg(tmp_path), findings=["AF"], now=T1)
    with session_factory() as s:
        assert [r["id"] for r in worklist_rows(s)] == [e2, e6]
        assert count_worklist(s) == 2 and wards(s) == ["ICU"]
        row = next(r for r in ecg_rows(s) if r["id"] == e1)
        assert row["confirmation"] == {
            "status": "confirmed",
            "by": "arossi",
            "by_name": "Anna Rossi",
            "at": "2026-02-01T09:30:00+00:00",
            "findings": ["AF"],
            "version": 1,
        }
        assert row["ward"] == "Cardiology"


# --- the re-issued report and SR ------------------------------------------------------------------

CONFIRMATION_ROW = SimpleNamespace(
    username="arossi",
    full_name="Anna Rossi",
    hl7_id="D123",
    created_at=T1,
    findings=["RBBB"],
    statements=["Sinus rhythm"],
    comment="compare with prior",
    outcome="corrected",
    version=2,
)


@pytest.mark.one_db  # drawing, not a database matter
def test_the_pdf_report_says_confirmed_by_whom_and_when(session_factory, seeded, tmp_path):
    import io

    from pypdf import PdfReader

    from gateway.rebuild import report_pdf

    with session_factory() as s:
        ecg = s.get(EcgInstance, seeded["e1"])
        after = report_pdf(ecg, tmp_path / "spool", confirmation=CONFIRMATION_ROW)
    text = lambda pdf: " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)  # noqa: E731
    shown = text(after)
    assert "Corrected by Anna Rossi (D123) at 2026-02-01 09:30 UTC (version 2)" in shown
    assert "Physician: RBBB (Right bundle branch block)" in shown
    assert "Sinus rhythm; Comment: compare with prior" in shown
    assert "not confirmed by a physician" not in shown
    assert "AI findings" in shown  # the AI's own output stays on the page


@pytest.mark.slow  # dciodvfy twice
def test_the_sr_of_a_confirmation_is_final_and_verified_by_the_reader(sample_path, tmp_path):
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from gateway.report.dicom import CONFIRMED_TITLE, comprehensive_sr, encapsulated_pdf
    from gateway.report.pdf import reader_confirmation
    from test_pacs import dciodvfy, values

    source = dcmread(sample_path)
    sr = comprehensive_sr(
        source,
        values(confirmation=reader_confirmation(CONFIRMATION_ROW), reader_pn="Rossi^Anna"),
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
        predecessors=[(generate_uid(), generate_uid())],  # the AI's SR: validated by dciodvfy too
    )
    doc = encapsulated_pdf(
        source, b"%PDF-1.4\n%%EOF", series_uid=generate_uid(), sop_uid=generate_uid(), when=T1, confirmed=True
    )
    for ds in (sr, doc):
        report = dciodvfy(ds, tmp_path)
        assert "Error" not in report, report
    assert (sr.PreliminaryFlag, sr.VerificationFlag) == ("FINAL", "VERIFIED")
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Rossi^Anna"
    texts = [i.TextValue for i in sr.ContentSequence if i.ValueType == "TEXT"]
    assert "Corrected by Anna Rossi (D123) at 2026-02-01 09:30 UTC (version 2)." in texts
    assert "Sinus rhythm" in texts and "compare with prior" in texts
    physician = [
        i.ConceptCodeSequence[0].value
        for i in sr.ContentSequence
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].value == "PHYSICIAN_FINDING"
    ]
    assert physician == ["59118001"]
    assert doc.DocumentTitle == CONFIRMED_TITLE


@pytest.mark.slow  # draws two PDFs (~8 s on a loaded machine)
@pytest.mark.one_db  # drawing the PDF; the transaction is the same code on both
def test_confirm_ecg_embeds_the_reissued_pdf_and_refuses_an_unknown_ecg(session_factory, seeded, tmp_path):
    import io

    from pypdf import PdfReader

    from gateway.admin.overread import confirm_ecg
    from gateway.deliver.oru import embedded_pdf

    config = Config.model_validate({"storage": {"spool_dir": str(tmp_path / "spool")}, "hl7": {"embed_pdf": True}})
    state = confirm_ecg(
        session_factory, config, seeded["e1"], READER, findings=["AF"], actor="arossi", address="10.0.0.9"
    )
    assert (state["status"], state["version"], state["result_status"]) == ("confirmed", 1, "F")
    pdf = embedded_pdf(_payload(session_factory, state["hl7_message_id"]))
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    assert "Confirmed by Anna Rossi (D123) at" in text
    with pytest.raises(ConfirmError) as err:
        confirm_ecg(session_factory, config, 999_999, READER, findings=[], actor="arossi")
    assert err.value.status == 404


def test_a_resent_confirmation_is_still_the_readers_result(session_factory, seeded, tmp_path):
    from gateway.deliver.outbox import resend

    config = cfg(tmp_path)
    cid = _confirm(session_factory, seeded["e1"], config, findings=["RBBB"], now=T1)
    with session_factory() as s, s.begin():
        first = s.get(Confirmation, cid).hl7_message_id
        again = resend(s, first, "arossi", config.hl7).id
    with session_factory() as s, s.begin():
        third = resend(s, again, "arossi", config.hl7).id  # a resend of the resend
    for message_id in (again, third):
        obr = hl7.parse(_payload(session_factory, message_id)).segment("OBR")
        assert str(obr[25]) == "F" and str(obr[32][0][0][0]) == "D123"
    # the AI's own message resent stays the AI's (no reader)
    with session_factory() as s, s.begin():
        ai = s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == seeded["e1"]).order_by(Hl7Message.id)).first()
        ai_again = resend(s, ai.id, "arossi", config.hl7).id
    obr = hl7.parse(_payload(session_factory, ai_again)).segment("OBR")
    assert len(obr) <= 32 or str(obr[32]) == ""


def test_results_show_lists_every_over_read_version(session_factory, seeded, tmp_path):
    from gateway.admin.cli import format_detail

    with session_factory() as s:
        text = format_detail(ecg_detail(s, str(seeded["e1"])))
    assert "over-read     unconfirmed (the AI result is preliminary)" in text
    _confirm(
        session_factory,
        seeded["e1"],
        cfg(tmp_path),
        findings=["RBBB"],
        statements=["Sinus rhythm"],
        comment="ok",
        now=T1,
    )
    with session_factory() as s:
        text = format_detail(ecg_detail(s, str(seeded["e1"])))
    assert "over-read     corrected" in text
    assert (
        "    v1 2026-02-01T09:30:00+00:00 corrected by Anna Rossi (D123): RBBB | Sinus rhythm | comment: ok (OBR-25 F)"
    ) in text
    assert "  findings      AF" in text  # the AI's, unchanged


def test_two_readers_at_once_make_two_versions_or_a_409(session_factory, seeded, tmp_path):
    """Concurrent confirmations of one ECG never make two version 1s: the ECG row
    is locked (PostgreSQL: the second waits and becomes version 2) or the unique
    version refuses the second (409, nothing half-written)."""
    import threading

    from gateway.admin.overread import confirm_ecg

    config = cfg(tmp_path)
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def reader(name: str) -> None:
        start.wait()
        try:
            outcomes.append(
                confirm_ecg(session_factory, config, seeded["e1"], Reader(username=name), findings=["AF"], actor=name)[
                    "version"
                ]
            )
        except ConfirmError as exc:
            outcomes.append(exc.status)

    threads = [threading.Thread(target=reader, args=(n,)) for n in ("r1", "r2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    versions = [o for o in outcomes if o in (1, 2)]
    assert sorted(versions) in ([1, 2], [1]) and len(outcomes) == 2
    with session_factory() as s:
        rows = s.scalars(select(Confirmation).where(Confirmation.ecg_id == seeded["e1"])).all()
        assert sorted(c.version for c in rows) == sorted(versions)
        messages = s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == seeded["e1"])).all()
        assert len(messages) == 1 + len(rows)  # one ORU per stored version, none for a refused one


@pytest.mark.slow  # builds three SRs (~3-5 s)
@pytest.mark.one_db  # building DICOM objects; the rows are tested on both databases above
def test_each_sr_names_the_earlier_srs_of_its_ecg_as_predecessors(session_factory, seeded, tmp_path):
    """PS3.3 C.17.2: a physician's SR lists the AI's SR (and earlier over-reads)
    in PredecessorDocumentsSequence, so a PACS can tell it replaces them."""
    from gateway.deliver.pacs import build_object, enqueue_pacs

    config = cfg(tmp_path, pacs=True)
    e1 = seeded["e1"]
    with session_factory() as s, s.begin():
        enqueue_pacs(s, s.get(EcgInstance, e1), config.pacs)  # the AI's objects, as the worker queues them
    _confirm(session_factory, e1, config, findings=["RBBB"], now=T1)
    _confirm(session_factory, e1, config, findings=["RBBB", "AF"], now=T1 + timedelta(hours=1))
    with session_factory() as s:
        rows = s.scalars(
            select(PacsMessage).where(PacsMessage.ecg_id == e1, PacsMessage.kind == "sr").order_by(PacsMessage.id)
        ).all()
        assert len(rows) == 3
        built = [build_object(s, m, tmp_path / "spool", 64 * 1024 * 1024) for m in rows]

    def predecessors(sr):  # type: ignore[no-untyped-def]
        return [
            (study.StudyInstanceUID, series.SeriesInstanceUID, ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
            for study in sr.get("PredecessorDocumentsSequence", [])
            for series in study.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        ]

    ai, first, second = built
    study = ai.StudyInstanceUID
    as_ref = lambda m: (study, m.series_instance_uid, "1.2.840.10008.5.1.4.1.1.88.33", m.sop_instance_uid)  # noqa: E731
    assert predecessors(ai) == []
    assert predecessors(first) == [as_ref(rows[0])]
    assert predecessors(second) == [as_ref(rows[0]), as_ref(rows[1])]
    assert [sr.SOPInstanceUID for sr in built] == [m.sop_instance_uid for m in rows]


@pytest.mark.slow  # draws the PDF and builds the SR (~6 s)
@pytest.mark.one_db  # building DICOM objects; the rows are tested on both databases above
def test_the_pacs_objects_of_a_confirmation_report_it(session_factory, seeded, tmp_path):
    import io

    from pypdf import PdfReader

    from gateway.deliver.pacs import build_object
    from gateway.report.dicom import CONFIRMED_TITLE, DOCUMENT_TITLE

    config = cfg(tmp_path, pacs=True)
    _confirm(session_factory, seeded["e1"], config, findings=["RBBB"], statements=["Sinus rhythm"], now=T1)
    with session_factory() as s:
        objects = {
            m.kind: build_object(s, m, tmp_path / "spool", 64 * 1024 * 1024)
            for m in s.scalars(select(PacsMessage).where(PacsMessage.ecg_id == seeded["e1"]))
        }
    pdf, sr = objects["pdf"], objects["sr"]
    assert pdf.DocumentTitle == CONFIRMED_TITLE != DOCUMENT_TITLE
    text = PdfReader(io.BytesIO(bytes(pdf.EncapsulatedDocument))).pages[0].extract_text()
    assert "Corrected by Anna Rossi (D123) at 2026-02-01 09:30 UTC" in text
    assert (sr.PreliminaryFlag, sr.VerificationFlag) == ("FINAL", "VERIFIED")
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Rossi^Anna"
    assert (str(pdf.ContentDate), str(sr.ContentDate)) == ("20260201", "20260201")  # the confirmation's time
