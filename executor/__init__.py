"""The jobyard executor agent: a Celery worker that runs each job in its own container."""
