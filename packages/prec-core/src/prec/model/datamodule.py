"""DataModule: the data side of a run (download, split, loaders) in one object, with Lightning's hooks.

:class:`StageData` is what a Trainer uses to find a stage's loaders: it checks the arguments when ``fit``/
``validate``/``test``/``predict`` is called (so a wrong object fails there, naming the argument), then, inside
the run, calls ``prepare_data`` and ``setup`` in Lightning's order and asks for the loaders, in this order of
precedence: loaders passed explicitly, the datamodule's ``*_dataloader()``, the module's own ``*_dataloader()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from prec._warnings import warn
from prec.errors import ConfigurationError, PrecWarning
from prec.model.hparams import HyperparametersMixin
from prec.seed import attach_worker_init_fn

STAGES = ("fit", "validate", "test", "predict")
#: The loader methods each stage asks for: ``(method, required)``.
_LOADERS: dict[str, tuple[tuple[str, bool], ...]] = {
    "fit": (("train_dataloader", True), ("val_dataloader", False)),
    "validate": (("val_dataloader", True),),
    "test": (("test_dataloader", True),),
    "predict": (("predict_dataloader", True),),
}
_ARGUMENTS = {"fit": ("train_dataloaders", "val_dataloaders")}


class DataModule(HyperparametersMixin):
    """Subclass it and override the hooks you need; pass it as ``trainer.fit(model, datamodule=dm)``.

    Order in a run: ``prepare_data()`` (once per node, on local rank zero: download here, assign no state),
    ``setup(stage)`` (on every process: split, build datasets), the stage's ``*_dataloader()`` after the model
    is set up, ``teardown(stage)`` at the end (also after an error).
    """

    #: ``True``: ``prepare_data`` runs on local rank zero of every node; ``False``: on global rank zero only.
    prepare_data_per_node: bool = True

    def __init__(self) -> None:
        self.trainer: Any = None  # set by the Trainer for the run

    def prepare_data(self) -> None:
        """Download or write files: runs in one process per node, so do not set state here."""

    def setup(self, stage: str) -> None:
        """Build datasets for ``stage`` (``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``) on every process."""

    def teardown(self, stage: str) -> None:
        """Release what ``setup`` built; called at the end of each run, also when it raised."""

    def train_dataloader(self) -> Any:
        raise ConfigurationError(f"{type(self).__name__} implements no train_dataloader(), which fit() needs.")

    def val_dataloader(self) -> Any:
        raise ConfigurationError(f"{type(self).__name__} implements no val_dataloader(), which validate() needs.")

    def test_dataloader(self) -> Any:
        raise ConfigurationError(f"{type(self).__name__} implements no test_dataloader(), which test() needs.")

    def predict_dataloader(self) -> Any:
        raise ConfigurationError(f"{type(self).__name__} implements no predict_dataloader(), which predict() needs.")

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints (plain containers and tensors), e.g. a sampler's position."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset[Any] | None = None,
        val_dataset: Dataset[Any] | None = None,
        test_dataset: Dataset[Any] | None = None,
        predict_dataset: Dataset[Any] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **loader_options: Any,
    ) -> DataModule:
        """A DataModule serving the given datasets (the training loader shuffles)."""
        datasets = {"train": train_dataset, "val": val_dataset, "test": test_dataset, "predict": predict_dataset}
        module = cls()
        for kind, dataset in datasets.items():
            if dataset is None:
                continue

            def loader(dataset: Dataset[Any] = dataset, shuffle: bool = kind == "train") -> DataLoader[Any]:
                return DataLoader(
                    dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **loader_options
                )

            setattr(module, f"{kind}_dataloader", loader)
        return module


def overrides(obj: Any, method: str) -> bool:
    """Whether ``obj`` implements ``method`` itself (not the DataModule/TrainingModule default)."""
    if method in getattr(obj, "__dict__", {}):  # set on the instance (from_datasets); None: not overridden
        return obj.__dict__[method] is not None
    implementation = getattr(type(obj), method, None)
    if implementation is None:
        return False
    base = DataModule if isinstance(obj, DataModule) else None
    if base is None:
        from prec.model.module import TrainingModule

        base = TrainingModule if isinstance(obj, TrainingModule) else None
    return base is None or implementation is not getattr(base, method, None)


class StageData:
    """The data of one stage: checked when created (at the ``fit``/``validate``/... call), resolved in the run.

    Args:
        stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        model: the module (its own ``*_dataloader()`` methods are the last resort).
        datamodule: a :class:`DataModule` or ``None``.
        loaders: for ``fit`` the ``(train_dataloaders, val_dataloaders)`` given, otherwise ``(dataloaders,)``;
            a DataModule passed in the first place is taken as ``datamodule`` (as in Lightning).
    """

    def __init__(self, stage: str, model: Any, datamodule: Any = None, *loaders: Any) -> None:
        if stage not in STAGES:
            raise ConfigurationError(f"stage={stage!r} must be one of {STAGES}.")
        names = _ARGUMENTS.get(stage, ("dataloaders",))
        loaders = (*loaders, *([None] * (len(names) - len(loaders))))
        if len(loaders) > len(names):
            raise ConfigurationError(f"{stage}() takes {len(names)} loader arguments ({', '.join(names)}).")
        given = list(loaders)
        if isinstance(given[0], DataModule):
            if datamodule is not None:
                raise ConfigurationError(f"{stage}() got a DataModule as {names[0]}= and as datamodule=; pass one.")
            datamodule, given[0] = given[0], None
        if datamodule is not None and not isinstance(datamodule, DataModule):
            raise ConfigurationError(
                f"{stage}(datamodule=...) takes a prec.DataModule, got {type(datamodule).__name__}"
                f"{_data_module_hint(datamodule)}."
            )
        if datamodule is not None and any(loader is not None for loader in given):
            passed = [name for name, loader in zip(names, given, strict=True) if loader is not None]
            raise ConfigurationError(
                f"{stage}() got both datamodule= and {', '.join(passed)}=; pass the loaders or the datamodule."
            )
        for name, loader in zip(names, given, strict=True):
            if loader is not None:
                _check_iterable(f"{stage}({name}=...)", loader)
        self.stage = stage
        self.model = model
        self.datamodule: DataModule | None = datamodule
        self.given = dict(zip(names, given, strict=True))
        if datamodule is None and given[0] is None:
            method = _LOADERS[stage][0][0]
            if not overrides(model, method):
                raise ConfigurationError(
                    f"{stage}() has no data: pass {names[0]}=, a datamodule= implementing {method}(), or implement"
                    f" {type(model).__name__}.{method}()."
                )
        self.prepared = False

    def prepare(
        self, *, local_rank: int = 0, global_rank: int = 0, barrier: Callable[[str], None] | None = None
    ) -> None:
        """Lightning's order: ``prepare_data`` (datamodule, then module; once per node or once in all), a
        barrier, then ``datamodule.setup(stage)``. Call it before the callbacks' and the module's ``setup``."""
        for owner in (self.datamodule, self.model):
            if owner is None or not overrides(owner, "prepare_data"):
                continue
            per_node = getattr(owner, "prepare_data_per_node", True)
            if (local_rank if per_node else global_rank) == 0:
                owner.prepare_data()
        if barrier is not None:
            barrier("prepare_data")
        if self.datamodule is not None:
            self.datamodule.setup(self.stage)
        self.prepared = True

    def loaders(
        self, *, worker_rank: int = 0, validation: bool = True, validation_first: bool = False
    ) -> tuple[Any, ...]:
        """The stage's loaders: ``(train, val)`` for fit (``val`` may be ``None``), ``(loader,)`` otherwise. A
        ``DataLoader`` without a ``worker_init_fn`` gets prec's when ``seed_everything(workers=True)`` ran.

        ``validation=False`` (the run's loop knows that validation is off: ``limit_val_batches=0`` or no
        ``validation_step``) leaves fit's validation loader out without calling ``val_dataloader()``, as
        Lightning does; ``validation_first=True`` asks for it before the training loader, as Lightning does when
        a sanity check runs first. ``test``/``predict`` may have several loaders (a list or dict of DataLoaders):
        they come back as one :class:`SeveralLoaders`."""
        if not self.prepared:
            raise ConfigurationError("StageData.loaders() needs prepare() first (prepare_data and setup).")
        slots = list(zip(_LOADERS[self.stage], self.given.items(), strict=True))
        order = range(len(slots) - 1, -1, -1) if validation_first else range(len(slots))
        resolved: list[Any] = [None] * len(slots)
        for index in order:
            (method, required), (name, given) = slots[index]
            if validation or method != "val_dataloader" or self.stage != "fit":
                resolved[index] = self._resolve(method, required, name, given, worker_rank)
        return tuple(resolved)

    def defines(self, method: str) -> bool:
        """Whether the stage has a source for ``method``'s loader (given, or the method overridden), without
        calling the method."""
        names = [own for own, _ in _LOADERS[self.stage]]
        if method in names and list(self.given.values())[names.index(method)] is not None:
            return True
        owner = self.datamodule if self.datamodule is not None else self.model  # as _from_methods decides
        return overrides(owner, method)

    def reload(self, method: str, *, worker_rank: int = 0) -> Any:
        """``method``'s loader asked for again (``reload_dataloaders_every_n_epochs``); ``None`` when the stage
        got that loader as an argument, which is kept as it is."""
        for (own, required), (name, given) in zip(_LOADERS[self.stage], self.given.items(), strict=True):
            if own == method:
                return None if given is not None else self._resolve(method, required, name, None, worker_rank)
        raise ConfigurationError(f"{self.stage}() has no {method}(); it asks for {_LOADERS[self.stage]}.")

    def _resolve(self, method: str, required: bool, name: str, given: Any, worker_rank: int) -> Any:
        loader = given if given is not None else self._from_methods(method, required)
        if loader is None:
            return None
        where = name if given is not None else method
        several = _several(loader) if self.stage in ("test", "predict") else None
        if several is not None:
            for item in several.loaders:
                attach_worker_init_fn(item, worker_rank)
            return several
        loader = _single(loader, where)
        attach_worker_init_fn(loader, worker_rank)
        return loader

    def teardown(self) -> None:
        """``datamodule.teardown(stage)``: first in a run's teardown, as in Lightning."""
        if self.datamodule is not None and self.prepared:
            self.datamodule.teardown(self.stage)

    def _from_methods(self, method: str, required: bool) -> Any:
        for owner in (self.datamodule, self.model):
            if owner is None or not overrides(owner, method):
                continue
            if owner is self.model and self.datamodule is not None:
                warn(
                    f"{type(owner).__name__}.{method}() is ignored: the datamodule does not implement it and"
                    f" {self.stage}() uses the datamodule's loaders only.",
                    PrecWarning,
                )
                return None
            loader = getattr(owner, method)()
            where = f"{type(owner).__name__}.{method}()"
            if loader is None:
                if required:
                    raise ConfigurationError(f"{where} returned None; {self.stage}() needs a loader from it.")
                return None
            _check_iterable(where, loader)
            return loader
        if required:
            raise ConfigurationError(f"{self.stage}() needs {method}() on the datamodule or the module.")
        return None


def resolve_dataloaders(stage: str, model: Any, datamodule: Any = None, *loaders: Any) -> tuple[Any, ...]:
    """Check, ``prepare_data``, ``setup`` and fetch in one call (single process): ``(train, val)`` for fit,
    ``(loader,)`` otherwise. A Trainer uses :class:`StageData`'s steps separately, around the module's setup."""
    data = StageData(stage, model, datamodule, *loaders)
    data.prepare()
    return data.loaders()


def _check_iterable(where: str, loader: Any) -> None:
    if isinstance(loader, torch.Tensor) or type(loader).__module__ == "numpy":
        raise ConfigurationError(
            f"{where} got a {type(loader).__name__} of shape {tuple(loader.shape)}; iterating it would give rows,"
            " not batches. Pass a DataLoader: torch.utils.data.DataLoader(TensorDataset(inputs, targets),"
            " batch_size=...)."
        )
    if isinstance(loader, (str, bytes, Dataset)) and not isinstance(loader, IterableDataset):
        kind = type(loader).__name__
        raise ConfigurationError(
            f"{where} got a {kind}; pass a DataLoader (or another iterable of batches): wrap a dataset in"
            " torch.utils.data.DataLoader(...)."
        )
    if isinstance(loader, DataModule) or not isinstance(loader, Iterable):
        raise ConfigurationError(
            f"{where} got {type(loader).__name__}, which is not an iterable of batches; pass a DataLoader"
            f"{_data_module_hint(loader)}."
        )


def _data_module_hint(obj: Any) -> str:
    if isinstance(obj, DataModule):
        return " (a DataModule goes in datamodule=)"
    if any(hasattr(obj, method) for method in ("train_dataloader", "val_dataloader", "test_dataloader")):
        return " (it looks like a data module: subclass prec.DataModule and pass it as datamodule=)"
    return ""


class SeveralLoaders:
    """The loaders of a stage that runs several (``test``/``predict`` given a list or dict of DataLoaders), in
    order: the index of each is the ``dataloader_idx`` the steps and hooks receive. Not an iterable of batches
    itself, so no loop mistakes it for one loader."""

    def __init__(self, loaders: Sequence[Any]) -> None:
        self.loaders = tuple(loaders)

    def __len__(self) -> int:
        return len(self.loaders)


def _loader_items(loader: Any) -> list[Any] | None:
    """The DataLoaders of a non-empty list, tuple or dict of DataLoaders (Lightning's several loaders), else None."""
    if isinstance(loader, (list, tuple, dict)) and loader:
        items = list(loader.values()) if isinstance(loader, dict) else list(loader)
        if all(isinstance(item, DataLoader) for item in items):
            return items
    return None


def _several(loader: Any) -> SeveralLoaders | None:
    """Several loaders for a stage that takes them; ``None`` for one loader (a list of one included)."""
    items = _loader_items(loader)
    return SeveralLoaders(items) if items is not None and len(items) > 1 else None


def _single(loader: Any, where: str) -> Any:
    """One loader: a list of several DataLoaders (Lightning's multiple loaders) is refused, a list of one unwrapped."""
    items = _loader_items(loader)
    if items is None:
        return loader
    if len(items) == 1:
        return items[0]
    raise ConfigurationError(
        f"{where} gave {len(items)} DataLoaders; prec runs one loader per stage in fit() and validate(): combine"
        " the datasets (torch.utils.data.ConcatDataset) or run the stage once per loader (test() and predict()"
        " take several)."
    )
