"""ECG gateway: DICOM ECG in, AI reading out as HL7 ORU^R01.

The sub-packages follow the data's way: receive -> normalise -> infer ->
process -> store -> deliver -> admin.
"""

# The six findings' codes in the model's output order, defined in
# gateway.findings; re-exported here for older imports.
from gateway.findings import FINDINGS

__all__ = ["FINDINGS", "__version__"]

__version__ = "0.1.0"
