"""Findings from probabilities: a finding is called above its threshold."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.findings import FINDINGS


def apply_thresholds(probs: Mapping[str, float], thresholds: Mapping[str, float]) -> list[str]:
    """The codes whose probability is strictly above their threshold, in
    :data:`gateway.FINDINGS` order.

    Raises ``KeyError`` naming the code when a probability or threshold is
    missing: silently skipping a finding would hide a configuration error.
    """
    called = []
    for code in FINDINGS:
        if code not in probs:
            raise KeyError(f"no probability for finding {code!r}")
        if code not in thresholds:
            raise KeyError(f"no threshold for finding {code!r}")
        if float(probs[code]) > float(thresholds[code]):
            called.append(code)
    return called
