"""``python -m prec``: the ``prec`` command line."""

from prec.cli import main

main(prog_name="prec")
