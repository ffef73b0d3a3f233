"""Receive: the DICOM storage SCP and archive ingest; durable before acknowledging."""
