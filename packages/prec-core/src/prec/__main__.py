"""``python -m prec``: the ``prec`` command line."""

from prec.cli.app import main

main(prog_name="prec")
