"""The worker: Celery app, thin tasks, and one module per pipeline step."""
