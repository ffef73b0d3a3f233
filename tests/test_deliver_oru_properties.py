"""Issue 13 §1, as properties: whatever text a data set carries, the ORU^R01
is one message of the planned segments, read back by an independent parser
(python-hl7) with one MSH, one PID and the PID-3 / OBR-18 it was given.

Values are arbitrary Unicode (surrogates included), arbitrary bytes decoded as
a DICOM reader might (Latin-1, UTF-8 with replacement or surrogateescape),
and texts dense in CR, LF, VT, FS, NEL, U+2028, HL7 delimiters and "MSH|".
"Given" means: the value as the builder's rule makes it (control characters
replaced by "?", ends stripped), escaped by the builder, unescaped by
python-hl7.

Examples per test: ``ECG_GATEWAY_FUZZ_EXAMPLES`` (default 500 for the
builder, a tenth of it through normalise).  Hypothesis runs derandomized: a
failure reproduces.
"""

from __future__ import annotations

import os
import warnings

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deliver_helpers import joined_texts
from gateway import FINDINGS
from gateway.config import Hl7Config
from gateway.deliver.mllp import frame_problem
from gateway.deliver.oru import (
    MORE,
    REJECTED_PREFIX,
    ST_MAX,
    OruBuildError,
    build_oru,
    escape,
    escape_pieces,
    replace_controls,
    to_charset,
)
from test_deliver_oru import ecg, prediction

EXAMPLES = int(os.environ.get("ECG_GATEWAY_FUZZ_EXAMPLES", "500"))
pytestmark = pytest.mark.slow  # hundreds of examples: the full tier (the builder's golden and unit tests are fast)
#: How many examples each test ran (printed at the end of the session by the report below).
RAN: dict[str, int] = {}

_NASTY = st.sampled_from(
    [
        "\r",
        "\n",
        "\x0b",
        "\x1c",
        "\x1d",
        "\x1e",
        "\x00",
        "\x7f",
        "\x85",
        "\u2028",
        "\u2029",
        "|",
        "^",
        "&",
        "~",
        "\\",
        "\\F\\",
        "\\X0D\\",
        "MSH|^~\\&|",
        "\rPID|1||666666",
        " ",
        "\t",
        "\ud800",
        "é",
        "山",
        "A",
        "9",
    ]
)
_unicode = st.text(alphabet=st.characters(exclude_categories=()), max_size=80)  # every code point, surrogates too
_dense = st.lists(_NASTY, max_size=30).map("".join)
_from_bytes = st.tuples(
    st.binary(max_size=80), st.sampled_from(["latin-1", "utf-8/replace", "utf-8/surrogateescape"])
).map(lambda b: b[0].decode(*b[1].split("/")) if "/" in b[1] else b[0].decode(b[1]))
TEXT = st.one_of(_unicode, _dense, _from_bytes)
#: DICOM values reach the builder at most 64 characters long (the receiver's columns); reasons are any length.
VALUE = TEXT.map(lambda s: s[:64])
OPTIONAL = st.one_of(st.none(), VALUE)
#: Patient ID and name: mostly with a usable start (an ECG without a Patient ID is refused, as documented).
PATIENT_ID = st.tuples(st.sampled_from(["", "P", "12^", "\r"]), VALUE).map(lambda t: (t[0] + t[1])[:64])
#: Reasons: the worker never stores a blank one (refused as documented when it happens).
REASON = st.tuples(st.sampled_from(["", "channel 1 (", "12 of 12 leads unusable: "]), TEXT).map("".join)


#: A reader's statement (at most 500 characters) or comment (2,000): long runs of any text.
def reader_text(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(TEXT, st.lists(TEXT, min_size=10, max_size=60).map(lambda parts: "".join(parts)[:limit]))


NAME = st.tuples(st.sampled_from(["", "Doe", "Doe^", "^Jo"]), OPTIONAL).map(lambda t: (t[0] + (t[1] or "")) or None)


def given_value(value: str | None) -> str:
    """What python-hl7 should read back for an identifier: the builder's rule, escaped, unescaped."""
    return replace_controls((value or "").strip())


def identifier_fits(value: str | None) -> bool:
    return len(escape(given_value(value))) <= ST_MAX


def planned_segments(e, p, cfg) -> list[str]:
    obx = 1 if p is None else len(FINDINGS) + max(1, len(set(p.findings) & set(FINDINGS))) + len(p.quality_flags) + 1
    obx += 1 if given_value(e.study_instance_uid) else 0
    return ["MSH", "PID"] + (["PV1"] if cfg.include_pv1 else []) + ["ORC", "OBR"] + ["OBX"] * obx


def check_message(er7: str, e, p, cfg) -> hl7.Message:
    """The properties of one built message."""
    assert frame_problem(er7.encode("utf-8")) is None
    msg = hl7.parse(er7)
    types = [str(segment[0]) for segment in msg]
    assert types == planned_segments(e, p, cfg)
    assert types.count("MSH") == 1 and types.count("PID") == 1
    assert msg["PID.F3.R1.C1"] == given_value(e.patient_id)
    assert msg["OBR.F18"] == given_value(e.accession_number)
    assert str(msg.segment("PID")[5]).strip("^")  # always a name, or "unspecified" (XPN-7 U)
    return msg


def report(name: str) -> None:
    RAN[name] = RAN.get(name, 0) + 1


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
@given(
    patient_id=PATIENT_ID,
    issuer=OPTIONAL,
    name=NAME,
    accession=OPTIONAL,
    placer=OPTIONAL,
    filler=OPTIONAL,
    requested=OPTIONAL,
    study=OPTIONAL,
    reason=REASON,
    flags=st.lists(TEXT, max_size=2),
    rejected=st.booleans(),
    pv1=st.booleans(),
)
def test_any_text_in_any_value_is_one_well_formed_message(
    patient_id, issuer, name, accession, placer, filler, requested, study, reason, flags, rejected, pv1
):
    report("builder")
    e = ecg(
        patient_id=patient_id,
        issuer_of_patient_id=issuer,
        patient_name=name,
        accession_number=accession,
        placer_order_number=placer,
        filler_order_number=filler,
        requested_procedure_id=requested,
        study_instance_uid=study,
        error=reason if rejected else None,
    )
    p = None if rejected else prediction(quality_flags=flags)
    cfg = Hl7Config(include_pv1=pv1)
    # The documented refusals; anything else must build.
    # (in message order, as hl7apy meets them)
    expected_error = (
        "PID-3: the ECG has no Patient ID"
        if not patient_id.strip()
        else "OBX-5: no prediction"
        if rejected and not reason.strip()
        else "PID-3: value longer"
        if not identifier_fits(patient_id)
        else "ORC-2: value longer"
        if not identifier_fits(placer)
        else "ORC-3: value longer"
        if not identifier_fits(filler)
        else "OBR-18: value longer"
        if not identifier_fits(accession)
        else "OBR-19: value longer"
        if not identifier_fits(requested)
        else "OBX-5: value longer"
        if not identifier_fits(study)
        else None
    )
    try:
        er7 = build_oru(e, p, cfg, "CTRL")
    except OruBuildError as exc:
        assert expected_error is not None and str(exc).startswith(expected_error), (str(exc), expected_error)
        report(f"builder: refused ({expected_error.split(':')[0]})")
        return
    assert expected_error is None, expected_error
    report("builder: built")
    msg = check_message(er7, e, p, cfg)
    if rejected:
        [obx] = msg.segments("OBX")[:1]
        sent, full = msg.unescape(str(obx[5])), REJECTED_PREFIX + given_value(reason)
        assert sent == full or (sent.endswith(MORE) and full.startswith(sent[: -len(MORE)].rstrip()))


# --- the same through normalise: labels, code values and meanings, units -----------------------------------


@pytest.fixture(scope="module")
def sample():
    import ecg_variants as v

    return v.load_sample()


@settings(
    max_examples=max(EXAMPLES // 10, 20),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(
    label=TEXT,
    code_value=st.one_of(st.none(), st.just("5.6.3-9-1"), TEXT),
    scheme=TEXT,
    meaning=TEXT,
    unit=st.one_of(st.none(), st.just("uV"), TEXT),
    channel=st.integers(0, 11),
)
def test_data_set_text_quoted_in_reasons_is_one_well_formed_message(
    sample, label, code_value, scheme, meaning, unit, channel
):
    import copy

    from pydicom.dataset import Dataset

    import ecg_variants as v
    from gateway.normalise import NormaliseError, normalise_dataset

    report("normalise")
    ds = copy.deepcopy(sample)
    item = v.rhythm(ds).ChannelDefinitionSequence[channel]
    with warnings.catch_warnings():  # values longer than their VR allows are part of the attack
        warnings.simplefilter("ignore")
        item.ChannelLabel = label
        if code_value is None:
            del item.ChannelSourceSequence
        else:
            source = item.ChannelSourceSequence[0]
            source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = code_value, scheme, meaning
        if unit is None:
            del item.ChannelSensitivityUnitsSequence
        else:
            item.ChannelSensitivityUnitsSequence = [Dataset()]
            item.ChannelSensitivityUnitsSequence[0].CodeValue = unit
        try:
            result = normalise_dataset(ds)
            reason, flags = None, result.quality_flags
        except NormaliseError as exc:
            reason, flags = str(exc), []
    if reason is not None:
        assert reason.isprintable(), reason  # data-set text is quoted repr-style in every reason
    report("normalise: rejected" if reason is not None else "normalise: processed")
    e = ecg(error=reason)
    p = None if reason is not None else prediction(quality_flags=flags)
    msg = check_message(build_oru(e, p, Hl7Config(), "CTRL"), e, p, Hl7Config())
    if reason is not None:
        sent = msg.unescape(str(msg.segments("OBX")[0][5]))
        assert sent == REJECTED_PREFIX + reason or sent.endswith(MORE)


@settings(
    max_examples=max(EXAMPLES // 5, 50),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
@given(
    reader_id=st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=64).filter(
        lambda t: t.strip()
    ),
    family=TEXT.filter(lambda t: t.strip()),
    given=TEXT,
    statements=st.lists(reader_text(500), max_size=3),
    comment=reader_text(2000),
    confirmed=st.sets(st.sampled_from(FINDINGS)),
    status=st.sampled_from(["F", "C"]),
)
def test_an_over_read_is_one_message_naming_its_reader(
    reader_id, family, given, statements, comment, confirmed, status
):
    """Issue 17: whatever a user record and a reader's texts hold, the confirmed
    ORU is one message whose OBR-32 names the reader (id and family name as
    given), with OBR-25 and every OBX-11 = the status, one impression per
    confirmed finding and statement (or one "none confirmed")."""
    from datetime import UTC, datetime

    from gateway.deliver.oru import OruOptions, OverRead

    report("over-read")
    over = OverRead(
        findings=tuple(confirmed),
        reader_id=reader_id,
        family_name=family,
        given_name=given,
        authority="HOSP",
        at=datetime(2026, 1, 2, tzinfo=UTC),
        statements=tuple(statements),
        comment=comment,
    )
    try:
        er7 = build_oru(
            ecg(), prediction(), Hl7Config(), "CTRL", options=OruOptions(result_status=status, over_read=over)
        )
    except OruBuildError as exc:
        # the only refusal: an identifier too long for HL7 once escaped (never cut)
        assert str(exc).startswith("OBR-32: value longer") and len(escape(replace_controls(reader_id.strip()))) > ST_MAX
        return
    assert frame_problem(er7.encode("utf-8")) is None
    msg = hl7.parse(er7)
    obr = msg.segment("OBR")
    assert str(obr[25]) == status
    assert {str(o[11]) for o in msg.segments("OBX")} == {status}
    cnn = obr[32][0][0] if not isinstance(obr[32][0], str) else obr[32]
    assert msg.unescape(str(cnn[0])) == replace_controls(reader_id.strip())
    sent_family = msg.unescape(str(cnn[1]))
    assert sent_family.strip() and (
        sent_family == replace_controls(family.strip()) or sent_family.endswith(MORE) or "?" in sent_family
    )
    assert str(cnn[8]) == "HOSP"
    if any(str(o[2]) == "TX" for o in msg.segments("OBX")):
        report("over-read: split")
    kept = [t for t in statements if t.strip()]
    # a text over ST's 199 characters comes in TX pieces (OBX-4 "k.1", "k.2", ...): joined, it is whole
    texts = joined_texts(msg, "8601-7")
    coded = [o for o in msg.segments("OBX") if str(o[3][0][0]) == "8601-7" and str(o[2]) == "CWE"]
    assert len(coded) == len(confirmed) and len(texts) == (len(kept) or (0 if confirmed else 1))
    sent = lambda t: to_charset(replace_controls(t.strip()), "UNICODE UTF-8", "OBX-5", replace=True)  # noqa: E731
    if kept:
        assert texts == [sent(t) for t in kept]
    assert joined_texts(msg, "READER_COMMENT") == ([sent(comment)] if comment.strip() else [])


@settings(max_examples=max(EXAMPLES // 5, 50), deadline=None, derandomize=True)
@given(text=reader_text(2000), limit=st.integers(min_value=3, max_value=199))
def test_escape_pieces_cut_a_text_whole_at_blanks_never_inside_an_escape(text, limit):
    pieces = escape_pieces(text, limit)
    assert "".join(pieces) == escape(text)
    assert all(0 < len(p) <= limit for p in pieces)
    assert all(p.count("\\") % 2 == 0 for p in pieces)  # escapes are \X\: never one cut in two
    for piece, following in zip(pieces, pieces[1:], strict=False):
        assert following[0].isspace() or not any(c.isspace() for c in piece[1:])  # a blank in reach was used


def test_zz_example_counts():
    """Prints how many examples ran (pytest -s); fails if the properties ran too few or never built."""
    print("\nexamples:", RAN)
    if "builder" in RAN:
        assert RAN["builder"] >= min(EXAMPLES, 100) and RAN.get("builder: built", 0) > RAN["builder"] // 3
    if "normalise" in RAN:
        assert RAN.get("normalise: rejected", 0) > 0
    if "over-read" in RAN:
        assert RAN.get("over-read: split", 0) > RAN["over-read"] // 10
