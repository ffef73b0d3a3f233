"""The six findings of the model: the one place their facts are written down.

Ribeiro et al., "Automatic diagnosis of the 12-lead ECG using a deep neural
network", Nat Commun 11, 1760 (2020).  Every module that needs a finding's
code, name, SNOMED CT code, local result code, threshold or published
test-set figures reads it here: config (default thresholds and probability
codes), the ORU builder, the admin queries and help texts, commissioning.

A leaf module: it imports nothing from the gateway's stage packages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Table2:
    """One row of the paper's Table 2 (the DNN on the 827-exam test set)."""

    precision: float
    recall: float
    specificity: float
    f1: float


@dataclass(frozen=True)
class Finding:
    """One model output."""

    #: The paper's abbreviation, the key everywhere (config, database JSON, API).
    code: str
    #: Display name.  It is also the display text sent with the SNOMED CT code
    #: (OBX-5 CWE.2) and in the probability's OBX-3.
    name: str
    #: SNOMED CT concept id.
    snomed: str
    #: Default local code of the probability observation (OBX-3.1, ``[hl7.probability_codes]``).
    probability_code: str
    #: The paper's threshold (chosen on validation for best F1); a finding is
    #: called when its probability is strictly above it.
    threshold: float
    #: The paper's Table 2.  It came from another seed than the published
    #: ``model.hdf5``, so commissioning compares against :attr:`published_model_f1`.
    table2: Table2
    #: F1 of the published ``model.hdf5`` at :attr:`threshold` on the test set
    #: (computed from the authors' published prediction files).
    published_model_f1: float
    #: Gold-standard positives among the published test set's exams.
    test_positives: int


#: Exams in the published test set (Zenodo record 3765780).
TEST_SET_EXAMS = 827

#: The findings in the model's output order (index k = output k).
REGISTRY: tuple[Finding, ...] = (
    Finding(
        "1dAVb", "1st degree AV block", "270492004", "1DAVB_PROB", 0.124, Table2(0.867, 0.929, 0.995, 0.897), 0.857, 28
    ),
    Finding(
        "RBBB", "Right bundle branch block", "59118001", "RBBB_PROB", 0.07, Table2(0.895, 1.00, 0.995, 0.944), 0.919, 34
    ),
    Finding(
        "LBBB", "Left bundle branch block", "164909002", "LBBB_PROB", 0.05, Table2(1.00, 1.00, 1.00, 1.00), 0.984, 30
    ),
    Finding("SB", "Sinus bradycardia", "426177001", "SB_PROB", 0.278, Table2(0.833, 0.938, 0.996, 0.882), 0.833, 16),
    Finding("AF", "Atrial fibrillation", "164889003", "AF_PROB", 0.39, Table2(1.00, 0.769, 1.00, 0.870), 0.783, 13),
    Finding("ST", "Sinus tachycardia", "427084000", "ST_PROB", 0.174, Table2(0.947, 0.973, 0.997, 0.960), 0.947, 37),
)

#: The codes, in the model's output order.
FINDINGS: tuple[str, ...] = tuple(f.code for f in REGISTRY)

#: Each finding by its code.
BY_CODE: Mapping[str, Finding] = MappingProxyType({f.code: f for f in REGISTRY})


def listed(last: str = ", ") -> str:
    """The codes as text for help strings: ``listed(" or ")`` gives
    ``"1dAVb, RBBB, LBBB, SB, AF or ST"``."""
    return ", ".join(FINDINGS[:-1]) + last + FINDINGS[-1]
