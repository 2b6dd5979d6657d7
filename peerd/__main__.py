"""``python -m peerd`` is the ``peerd`` command."""

from peerd.ops.cli import main

main()
