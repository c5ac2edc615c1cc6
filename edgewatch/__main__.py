"""``python -m edgewatch`` is the ``edgewatch`` command."""

from edgewatch.cli import main

main()
