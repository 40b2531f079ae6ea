"""The reference application: the seeds' asynchronous integrations as agents built on ``streams``."""
