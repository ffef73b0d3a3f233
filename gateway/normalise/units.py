"""Channel sensitivity units: owned by :mod:`gateway.formats.units` (the aECG
reader scales its values with them too); re-exported for the DICOM path."""

from gateway.formats.units import UnknownUnitError, millivolts_per_unit

__all__ = ["UnknownUnitError", "millivolts_per_unit"]
