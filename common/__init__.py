"""What producer and worker share: settings, endpoint config, models, errors, Redis state, the Celery app."""
