"""The plugin contract of prec.

A plugin is any importable object (usually a module) with functions named like the hooks below, decorated with
:data:`prec.hookimpl`, and published under the entry-point group ``prec``::

    [project.entry-points.prec]
    my_plugin = "my_package.plugin"

Each hook receives a ``register`` callback rather than returning values: a plugin registers as many things as it
likes, and prec records which plugin and distribution registered each one (for ``prec list``, conflict reports and
error messages). A hook implementation may accept fewer arguments than the spec offers.

Hooks are called once per registry build (the first use in a process, not ``import prec``), one plugin at a time.
An exception raised inside a hook, or a bad ``register(...)`` call, marks that plugin as broken and discards
everything it registered; other plugins keep working. Registering the same key twice from one plugin is a bug in
that plugin and is reported the same way.

Conflicts between plugins follow one rule for every key (accelerator name, precision × accelerator pair, strategy
name, alias): the highest ``priority`` wins; a tie at the top is a conflict that makes the key unusable, with an
error naming both plugins. Load order never decides. Built-in plugins register at priority 0, so a plugin that
replaces one of them passes ``priority=1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from prec.accelerator import Accelerator
    from prec.precision import Precision
    from prec.strategies.base import Strategy

PROJECT_NAME = "prec"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class RegisterAccelerator(Protocol):
    """The ``register`` callback of :func:`prec_register_accelerators`."""

    def __call__(self, accelerator: type[Accelerator], *, priority: int = 0) -> None: ...


class RegisterPrecision(Protocol):
    """The ``register`` callback of :func:`prec_register_precisions`."""

    def __call__(
        self,
        name: str,
        accelerator: str,
        factory: Callable[..., Precision],
        *,
        aliases: Iterable[str] = (),
        priority: int = 0,
        description: str = "",
    ) -> None: ...


class RegisterStrategy(Protocol):
    """The ``register`` callback of :func:`prec_register_strategies`."""

    def __call__(
        self,
        name: str,
        factory: Callable[..., Strategy],
        *,
        accelerators: Iterable[str] | None = None,
        precisions: Iterable[str] | None = None,
        priority: int = 0,
        description: str = "",
    ) -> None: ...


@hookspec
def prec_register_accelerators(register: RegisterAccelerator) -> None:
    """Register accelerator classes: ``register(AcceleratorSubclass, priority=0)``.

    The class must subclass :class:`prec.Accelerator` and set ``name`` (and optionally ``aliases``). It is
    instantiated lazily, so registering must not touch the device: ``prec list`` calls every plugin and has to
    stay fast and fork-safe. Registering a name another plugin already registered is a conflict unless one of
    them passes a higher ``priority``; equal priorities are never resolved by load order. An alias that is
    another accelerator's name is ignored (the name wins).
    """


@hookspec
def prec_register_precisions(register: RegisterPrecision) -> None:
    """Register precisions: ``register(name, accelerator, factory, *, aliases=(), priority=0, description="")``.

    ``name`` is the canonical precision string (``"bf16-mixed"``, or a new one such as ``"fp8-mixed"``);
    ``accelerator`` is the accelerator's canonical name. The accelerator does not have to be installed: a pair for
    a missing accelerator is listed by ``prec list`` and used once that accelerator appears. ``factory`` is called
    as ``factory(accelerator, **options)`` when a Trainer or :func:`prec.get_precision` selects the pair, and
    returns a :class:`prec.Precision`; it may raise :class:`prec.UnsupportedPrecisionError` when the device cannot
    run it (for example a GPU without bf16). ``aliases`` are extra names for a new precision; an alias that is a
    built-in or registered name (``"16"``, ``"bf16-mixed"``) is ignored. A pair the built-ins deliberately leave
    out (``16-mixed`` on ``cpu``) can be registered like any other; ``priority=1`` replaces a built-in pair.
    """


@hookspec
def prec_register_strategies(register: RegisterStrategy) -> None:
    """Register training strategies: ``register(name, factory, *, accelerators=None, precisions=None, priority=0)``.

    A strategy decides how many processes run and how the model and data are placed (single device, DDP, FSDP).
    ``factory`` is called as ``factory(accelerator=..., devices=..., num_nodes=..., precision=...)``.
    ``accelerators`` and ``precisions`` restrict which pairs the strategy accepts (``None`` means any).
    """
