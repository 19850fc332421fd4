"""Jobs: job specs and records, the pipeline a worker runs, the embedded and Celery queues."""
