"""Voltage units (UCUM, case-sensitive) -> factor to millivolts: DICOM channel
sensitivity units and aECG origin/scale units.

An unknown unit is an error, never a guess: ``MV`` is not ``mV`` in UCUM.
"""

from __future__ import annotations

import re

from gateway.quoting import quote

_PREFIX_TO_MV: dict[str, float] = {"": 1e3, "m": 1.0, "u": 1e-3, "\u00b5": 1e-3, "\u03bc": 1e-3, "n": 1e-6}
_PREFIXED = re.compile(r"^([mun\u00b5\u03bc]?)V$")
_POWER_OF_TEN = re.compile(r"^10\*([+-]?\d{1,2})\.V$")  # e.g. 10*-6.V = microvolt


class UnknownUnitError(ValueError):
    """The unit code is not a voltage this module knows."""


def millivolts_per_unit(unit: str) -> float:
    """Factor that converts a value in ``unit`` (uV, mV, V, 10*-6.V, ...) to mV."""
    text = unit.strip()
    match = _PREFIXED.match(text)
    if match:
        return _PREFIX_TO_MV[match.group(1)]
    match = _POWER_OF_TEN.match(text)
    if match:
        return 10.0 ** (int(match.group(1)) + 3)
    raise UnknownUnitError(f"unknown channel sensitivity unit {quote(unit)}")
