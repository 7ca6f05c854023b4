"""How every ``prec`` command reports: warnings raised while it runs are printed on stderr once each, and a
plugin error ends the command in one line with exit status 1."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator

import click

from prec.errors import PluginError


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Run a command's body: its warnings are printed by the CLI, a plugin error ends it in one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except PluginError as error:
            _print_warnings(caught)
            click.echo(f"prec: error: {' '.join(str(error).split())}", err=True)
            sys.exit(1)
    _print_warnings(caught)


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    seen: set[str] = set()
    for warning in caught:
        text = f"prec: warning: {warning.category.__name__}: {warning.message}"
        if text not in seen:
            seen.add(text)
            click.echo(text, err=True)
