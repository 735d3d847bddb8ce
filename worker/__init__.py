"""rtml-worker: a streaming scoring worker for real-time machine learning on Kafka."""

__version__ = "0.1.0"
