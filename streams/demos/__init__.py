"""Demonstrations users can run (``streams demo ...``)."""
