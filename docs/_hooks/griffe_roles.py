"""Griffe extension: render the reStructuredText roles in prec's docstrings as Markdown code.

prec's docstrings are Google style but cross-reference with Sphinx roles (``:class:`prec.Precision```), which
Markdown would show literally. The roles become plain inline code; double-backtick literals are already Markdown.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`~?([^`]+)`")


class RstRoles(griffe.Extension):
    """Rewrite roles in every docstring once an object is fully loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)
