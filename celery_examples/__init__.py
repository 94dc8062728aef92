"""Celery task modules that reproduce (and fix) the fork-safety deadlock, and the runner."""
