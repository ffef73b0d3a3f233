"""Prometheus metrics of the processing stage (default registry; /metrics serves them)."""

from prometheus_client import Counter, Histogram

ECG_OUTCOMES = Counter("ecg_gateway_ecgs_total", "ECGs finished by this process, by outcome.", ["outcome"])
LATENCY = Histogram(
    "ecg_gateway_received_to_processed_seconds",
    "From the durable C-STORE to the committed result.",
    buckets=(0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
BATCH_SIZE = Histogram("ecg_gateway_inference_batch_size", "ECGs per inference call.", buckets=(1, 2, 4, 8, 16, 32, 64))
INFERENCE_SECONDS = Histogram(
    "ecg_gateway_inference_seconds",
    "Wall time of one inference call.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
NORMALISE_SECONDS = Histogram(
    "ecg_gateway_normalise_seconds",
    "Decode + normalise time of one ECG.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
