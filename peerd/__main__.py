"""``python -m peerd`` is the ``peerd`` command."""

from peerd.cli import main

main()
