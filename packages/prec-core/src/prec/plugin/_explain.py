"""Why a registry lookup failed, in words: what is installed, which first-party package would add it, and which
broken or disabled plugin would have provided it. A mixin of :class:`prec.plugin.registry.Registry`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING

from prec.names import AUTO, readable_list
from prec.plugin import catalogue
from prec.plugin.entries import ACCELERATOR, PRECISION, PluginInfo, key_text, normalize_distribution

if TYPE_CHECKING:
    from prec.plugin.entries import AcceleratorEntry, PrecisionEntry


class Explanations:
    """The messages of failed lookups; reads only the registry's own tables."""

    accelerators: dict[str, AcceleratorEntry]
    precisions: dict[tuple[str, str], PrecisionEntry]
    plugins: dict[str, PluginInfo]
    autoload_disabled: bool
    _aliases: dict[str, str]

    def supported_precisions(self, accelerator: str) -> list[str]:
        raise NotImplementedError

    def _missing_accelerator_message(self, name: str, canonical: str) -> str:
        installed = sorted(self.accelerators)
        message = f"accelerator={name!r} is not installed. Installed accelerators: {readable_list(installed)}."
        package = catalogue.package_for_accelerator(canonical)
        if package:
            message += self._install_hint(package)
        else:
            candidates = installed + list(self._aliases) + [AUTO]
            match = difflib.get_close_matches(name.lower(), candidates, n=1, cutoff=0.6)
            if match:
                message += f" Did you mean {match[0]!r}?"
        return message + self.plugin_note(ACCELERATOR, lambda item: item == (ACCELERATOR, canonical), package)

    def _unsupported_message(self, name: str, accelerator: str) -> str:
        supported = self.supported_precisions(accelerator)
        message = f"precision={name!r} is not supported on accelerator {accelerator!r}."
        gap = catalogue.known_gap(name, accelerator)
        if gap:
            message += f" {gap}."
        package = catalogue.package_for_pair(name, accelerator)
        if package:
            message += self._install_hint(package)
        elsewhere = sorted(acc for n, acc in self.precisions if n == name)
        if elsewhere and not gap:
            message += f" {name} is available on: {readable_list(elsewhere)}."
        message += f" Supported on {accelerator}: {readable_list(supported, empty='nothing installed')}."
        wanted = (PRECISION, key_text((name, accelerator)))
        return message + self.plugin_note(PRECISION, lambda item: item == wanted, package)

    # -- plugins ----------------------------------------------------------------------------------------
    def _install_hint(self, package: str) -> str:
        installed = any(normalize_distribution(info.distribution) == package for info in self.plugins.values())
        return "" if installed else f" `pip install {package}` adds it."

    def plugin_note(self, kind: str, provides: Callable[[tuple[str, str]], bool], package: str | None = None) -> str:
        """Which broken or disabled plugin explains a failed lookup: one that registered the key before failing,
        or whose distribution is the package that provides it, definitely would have; other broken plugins may."""
        certain: list[str] = []
        possible: list[str] = []
        for info in self.plugins.values():
            ours = package is not None and normalize_distribution(info.distribution) == package
            if info.status == "error":
                if any(provides(item) for item in info.registered):
                    certain.append(f"{info.origin}, which registered it and then failed ({info.error})")
                elif ours:
                    certain.append(f"{info.origin}, which failed ({info.error})")
                else:
                    possible.append(f"{info.origin}: {info.error}")
            elif info.status == "disabled" and ours:
                certain.append(f"{info.origin}, which is disabled ({info.reason})")
        note = ""
        if certain:
            note = f" The {kind} would have come from {readable_list(certain)}."
        elif possible:
            note = f" These plugins failed to load and may have provided it: {readable_list(possible, 5)}."
        if self.autoload_disabled:
            note += " PREC_DISABLE_PLUGIN_AUTOLOAD is set: installed plugins were not loaded."
        return note
