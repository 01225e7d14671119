"""``python -m ibtools ...`` is the ``ibtools`` command."""

from ibtools.cli import main

main(prog_name="ibtools")
