"""Lead identification (DICOM CID 3001) and the derived limb leads.

Leads are identified by the number inside the code value, in either the MDC
(``2:N``, or the context-free ``131072 + N``) or the SCPECG (``5.6.3-9-N``)
spelling; only a channel without a parseable code falls back to its
CodeMeaning / ChannelLabel text.  A parseable code that is not one of the
twelve leads (e.g. the "derived lead" codes 2:31-2:38) stays unknown: its text
often names a lead it is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

LIMB_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF")
PRECORDIAL_LEADS: tuple[str, ...] = ("V1", "V2", "V3", "V4", "V5", "V6")
#: The model's documented input order (Ribeiro et al. 2020).
OUTPUT_LEADS: tuple[str, ...] = LIMB_LEADS + PRECORDIAL_LEADS
#: Leads that :func:`derive_limb_leads` computes from I and II.
DERIVABLE_LEADS: tuple[str, ...] = ("III", "aVR", "aVL", "aVF")
#: The Cabrera display's inverted aVR; negated into aVR.
NEGATIVE_AVR = "-aVR"

#: CID 3001 term number -> lead (MDC partition 2 and SCPECG share numbers).
LEAD_BY_NUMBER: dict[int, str] = {
    1: "I",
    2: "II",
    3: "V1",
    4: "V2",
    5: "V3",
    6: "V4",
    7: "V5",
    8: "V6",
    61: "III",
    62: "aVR",
    63: "aVL",
    64: "aVF",
    65: NEGATIVE_AVR,
}

_MDC = re.compile(r"^2:(\d+)$")
_MDC_CONTEXT_FREE = 2 << 16  # MDC partition 2 as a 32-bit context-free code
_SCPECG = re.compile(r"^5\.6\.3-9-(\d+)$")
_TEXT = re.compile(r"^(?:lead\s*)?(-?(?:iii|ii|i|avr|avl|avf|v[1-6]))(?:\s*\(.*\))?$", re.IGNORECASE)
_TEXT_CANON = {name.lower(): name for name in (*OUTPUT_LEADS, NEGATIVE_AVR)}


@dataclass(frozen=True)
class LeadId:
    """What one channel was identified as."""

    lead: str | None  # one of OUTPUT_LEADS, NEGATIVE_AVR, or None (unknown)
    code: str  # "SCHEME:VALUE" as found, "" when there is no code
    identified_by: str  # "code", "code meaning", "channel label" or "unknown"


def lead_from_code(code_value: str) -> tuple[bool, str | None]:
    """(code parsed?, lead) for a CID 3001 code value in MDC or SCPECG form."""
    value = code_value.strip()
    match = _MDC.match(value) or _SCPECG.match(value)
    if match:
        return True, LEAD_BY_NUMBER.get(int(match.group(1)))
    if value.isdigit() and _MDC_CONTEXT_FREE < int(value) < 2 * _MDC_CONTEXT_FREE:
        return True, LEAD_BY_NUMBER.get(int(value) - _MDC_CONTEXT_FREE)
    return False, None


def lead_from_text(text: str) -> str | None:
    """A lead named by free text ("Lead I (Einthoven)", "aVR", "V1"), else None."""
    match = _TEXT.match(" ".join(text.replace("_", " ").split()))
    return _TEXT_CANON[match.group(1).lower()] if match else None


def identify_lead(code_value: str, coding_scheme: str, code_meaning: str, channel_label: str) -> LeadId:
    """Identify a channel's lead: code first, then code meaning, then channel label."""
    code = f"{coding_scheme}:{code_value}" if code_value else ""
    parsed, lead = lead_from_code(code_value) if code_value else (False, None)
    if parsed:
        return LeadId(lead, code, "code" if lead else "unknown")
    for source, text in (("code meaning", code_meaning), ("channel label", channel_label)):
        lead = lead_from_text(text) if text else None
        if lead:
            return LeadId(lead, code, source)
    return LeadId(None, code, "unknown")


def derive_limb_leads(lead_i: np.ndarray, lead_ii: np.ndarray) -> dict[str, np.ndarray]:
    """III, aVR, aVL, aVF from I and II (Einthoven's law and Goldberger's leads)."""
    return {
        "III": lead_ii - lead_i,
        "aVR": -(lead_i + lead_ii) / 2,
        "aVL": lead_i - lead_ii / 2,
        "aVF": lead_ii - lead_i / 2,
    }
