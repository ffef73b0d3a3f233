"""Normalise: a DICOM ECG data set -> the model's (4096, 12) float32 input (pure functions)."""
