"""batchscribe: distributed batch speech-to-text on Celery + Redis."""

__version__ = "0.1.0"
