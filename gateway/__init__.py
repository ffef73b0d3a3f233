"""ECG gateway: DICOM ECG in, AI reading out as HL7 ORU^R01.

The sub-packages follow the data's way: receive -> normalise -> infer ->
process -> store -> deliver -> admin.
"""

__version__ = "0.1.0"

#: The six findings of Ribeiro et al. 2020, in the model's output order.
FINDINGS: tuple[str, ...] = ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")
