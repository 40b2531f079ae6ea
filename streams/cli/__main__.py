"""``python -m streams.cli`` = the ``streams`` command."""

from streams.cli import main

main()
