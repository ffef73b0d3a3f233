"""Process: claim stored ECGs, normalise, infer, persist the result and the outbox row."""
