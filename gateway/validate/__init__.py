"""Validate: commissioning on the paper's published test set (``ecg-gateway validate``).

metrics (pure maths), dataset (fetch and read the test set), roundtrip
(test set -> DICOM -> a real gateway), report (text/HTML/JSON), run (one
run), cli (the command).  Import the sub-modules directly; this package
imports nothing heavy.
"""
