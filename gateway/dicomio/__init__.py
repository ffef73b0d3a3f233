"""The one place DICOM bytes are read: :func:`gateway.dicomio.reader.read`
(a fast path and ``pydicom.dcmread`` behind one function) and the limits that
hold every read to ``[dicom] max_dataset_mb`` (:mod:`gateway.dicomio.limits`).

A leaf: it imports no stage, and receive, process, deliver, rebuild and admin
all read through it.  This file imports nothing, so light commands can import
:mod:`gateway.dicomio.limits` without loading pydicom.
"""
