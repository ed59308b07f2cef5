"""The thin Celery shell around ``pipelines``: one task, run in worker processes."""
