"""One element's value from a data set, decoded as ``Dataset.__getitem__``
decodes it, at about half the cost: :func:`value`.

The worker's normalise and the cart's report each read ~75 values from
items of a freshly read data set (codes, labels, counts: ~150 an ECG).  Each
first access through ``Dataset.get``/``__getitem__`` converts the raw element
with pydicom's own ``convert_raw_data_element`` and then stores it back, with
bookkeeping around it (tag normalisation and comparisons, ``__setitem__``'s
checks, a deferred-read test) that costs as much as the conversion itself.
:func:`value` calls the same conversion with the same character set and
takes the rest only where it changes something (a deferred value, an
ambiguous VR to correct, a sequence, Specific Character Set itself): those
go through ``__getitem__``.  The converted element is not stored back, so the
data set keeps its raw element (a second read converts it again).
"""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import DataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.valuerep import AMBIGUOUS_VR, VR

_SPECIFIC_CHARACTER_SET = 0x00080005


def value(item: Dataset, tag: int) -> Any:
    """``item[tag].value``, None when ``item`` has no such element (what
    ``item.get(tag)`` gives, as its ``.value``; errors of the conversion are
    raised as ``__getitem__`` raises them)."""
    element = item.get_item(tag, keep_deferred=True)
    if element is None:
        return None
    if isinstance(element, DataElement):
        return element.value
    encoding = item.original_character_set
    if element.value is None or tag == _SPECIFIC_CHARACTER_SET or not encoding:
        return item[tag].value  # a deferred read, or __getitem__ picks another character set
    converted = convert_raw_data_element(element, encoding=encoding, ds=item)
    if converted.VR == VR.SQ or converted.VR in AMBIGUOUS_VR:
        return item[tag].value  # __getitem__ also fixes these up (pixel representation, US or SS)
    return converted.value
