"""Deliver: HL7 v2.5.1 ORU^R01 over MLLP from the database outbox."""
