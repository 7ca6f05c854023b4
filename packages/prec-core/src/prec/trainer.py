"""The Trainer: resolves accelerator, precision and strategy from the registry, then runs the loops."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

import torch

from prec.accelerator import Accelerator, DevicesInput
from prec.callbacks.model_checkpoint import ModelCheckpoint
from prec.callbacks.progress import ProgressBarCallback, TQDMProgressBar
from prec.errors import ConfigurationError
from prec.loggers import LoggerGroup
from prec.model.callback import Callback
from prec.model.datamodule import DataModule, StageData
from prec.model.module import TrainingModule, unwrap_compiled
from prec.precision import NonFinitePolicy, Precision
from prec.training.composition import get_registry
from prec.training.config import TrainerConfig, check_ckpt_path, reject_unknown_arguments
from prec.training.forwarding import Forwarded
from prec.training.module_init import module_init
from prec.training.optim import ManualOptimizer, clip_with_settings
from prec.training.run_state import RunState
from prec.training.selection import select_parts
from prec.training.settings import Setting
from prec.training.stages import run_stage


def _default_callbacks(settings: TrainerConfig) -> list[Callback]:
    """What a Trainer adds on its own, as Lightning does: a :class:`prec.ModelCheckpoint` (``enable_checkpointing``)
    and the tqdm progress bar (``enable_progress_bar``) unless ``callbacks`` hold them. The one place that picks
    default callbacks."""
    callbacks = settings.callbacks
    added: list[Callback] = []
    if settings.enable_checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        added.append(ModelCheckpoint())
    bars = [c for c in callbacks if isinstance(c, ProgressBarCallback)]
    if bars and not settings.enable_progress_bar:
        raise ConfigurationError(
            f"enable_progress_bar=False, but callbacks holds {type(bars[0]).__name__}; drop one of them."
        )
    if settings.enable_progress_bar and not bars:
        added.append(TQDMProgressBar())
    return added


class Trainer:
    """Train a :class:`prec.TrainingModule` at a chosen precision on a chosen accelerator.

    Every argument is checked when the Trainer is built (see :class:`prec.training.config.TrainerConfig`, kept as
    ``trainer.config``): a bad value is a :class:`prec.ConfigurationError` naming the argument and what it accepts.
    A Lightning argument prec leaves out on purpose (``profiler``, ``sync_batchnorm`` …) is a ConfigurationError
    that says what to do instead; a misspelt one gets a did-you-mean.

    Args:
        accelerator: a registered accelerator name or alias (``"cpu"``, ``"gpu"``, ``"tpu"``) or ``"auto"``, in any
            case; or a :class:`prec.Accelerator` instance.
        devices: ``"auto"`` (one device), a count ``N``, ``-1`` (every device), a list of distinct indices, or a
            string (``"2"``, ``"0,1"``).
        precision: a precision name (``"bf16-mixed"`` …), a legacy value (``16``, ``"32"`` …), ``"auto"``
            or ``None`` (32-true).
        plugins: a configured :class:`prec.Precision` instance to use as is (then leave ``precision`` unset).
        strategy: ``"auto"``, ``"single"`` or a strategy a plugin registered (``"ddp"`` …), in any case; or a
            :class:`prec.Strategy` instance.
        num_nodes: machines taking part (an int >= 1).
        max_epochs: stop after this many epochs (with neither this nor ``max_steps`` set, 1000 epochs).
        min_epochs: train at least this many epochs even when a callback sets ``should_stop`` (``max_*`` still
            stop first); ``None``: no minimum.
        max_steps: stop after this many optimizer steps, whichever limit comes first (``-1`` or ``None``: no step
            limit).
        min_steps: like ``min_epochs``, in optimizer steps.
        limit_train_batches: training batches per epoch: an int (batches) or a float in [0, 1] (fraction).
        limit_val_batches: validation batches per run, as ``limit_train_batches``.
        limit_test_batches: test batches per run, as ``limit_train_batches``.
        limit_predict_batches: prediction batches per run, as ``limit_train_batches``.
        overfit_batches: debug by overfitting: train and validate on this many batches (an int) or this fraction
            (a float) of each loader, every epoch the same ones: ``fit`` replaces a shuffling sampler with a
            sequential one, with a warning; ``0``: off. It sets ``limit_train_batches``/``limit_val_batches``.
        check_val_every_n_epoch: run validation every N training epochs.
        val_check_interval: also validate within an epoch: an int every N training batches, a float every
            that fraction of the epoch (``None``: at the end of the epoch only).
        num_sanity_val_steps: validation batches run before training starts, so a broken ``validation_step``
            fails in seconds (``0``: none, ``-1``: all).
        reload_dataloaders_every_n_epochs: ask the module or datamodule for the training and validation loaders
            again every N epochs (``*_dataloader()`` is called again; loaders passed to ``fit`` stay); ``0``: never.
        log_every_n_steps: write training metrics logged with ``on_step=True`` every N optimizer steps.
        gradient_clip_val: clip gradients before each optimizer step, on unscaled gradients under a grad scaler;
            ``0``/``None``: no clipping.
        gradient_clip_algorithm: ``"norm"`` (the default) or ``"value"``.
        accumulate_grad_batches: step the optimizers every N batches; each batch's loss is divided by N.
        fast_dev_run: ``True`` (1) or N: run N batches of each stage once, to find bugs fast, with no loggers,
            checkpoints or sanity validation; ``False``/``0``: off.
        deterministic: ``True``: ``torch.use_deterministic_algorithms(True)``; ``"warn"``: the same with
            ``warn_only=True``; ``False``: turn it off; ``None``: leave torch's setting as it is.
        benchmark: ``torch.backends.cudnn.benchmark`` for the run (restored after it); ``None``: leave it as it is
            (``False`` under ``deterministic=True``, as in Lightning).
        logger: ``True`` (a :class:`prec.CSVLogger` under ``default_root_dir``), ``False``/``None``, a logger
            (:class:`prec.CSVLogger`, :class:`prec.TensorBoardLogger` or any object following
            :class:`prec.loggers.Logger`) or a list of loggers.
        callbacks: a :class:`prec.Callback` or a list of them.
        enable_progress_bar: show a progress bar (``True``/``False``).
        enable_checkpointing: with no :class:`prec.ModelCheckpoint` in ``callbacks``, add one that saves the
            last epoch under ``default_root_dir`` (``True``/``False``).
        enable_model_summary: print a summary of the model's layers and parameter counts at the start of
            ``fit`` (``True``/``False``).
        default_root_dir: where logs and checkpoints go (``None``: the current directory).
        precision_options: keyword options for the precision's factory (``init_scale`` …).
        nonfinite: what an optimizer step with inf/NaN gradients does, at every precision: ``"skip"`` (the
            default: the step is not applied, counted in ``skipped_steps`` and warned about; a long run of skips
            warns, then raises :class:`prec.NonFiniteError`), ``"raise"`` (:class:`prec.NonFiniteError` before the
            step) or ``"off"``; or a :class:`prec.NonFinitePolicy` with its thresholds.
    """

    def __init__(
        self,
        *,
        accelerator: str | Accelerator = "auto",
        devices: DevicesInput = "auto",
        precision: str | int | None = None,
        plugins: Precision | Sequence[Any] | None = None,
        strategy: str = "auto",
        num_nodes: int = 1,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int | None = -1,
        min_steps: int | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        check_val_every_n_epoch: int = 1,
        val_check_interval: int | float | None = None,
        num_sanity_val_steps: int = 2,
        reload_dataloaders_every_n_epochs: int = 0,
        log_every_n_steps: int = 50,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        accumulate_grad_batches: int = 1,
        fast_dev_run: bool | int = False,
        deterministic: bool | Literal["warn"] | None = None,
        benchmark: bool | None = None,
        logger: Any = True,
        callbacks: Callback | Iterable[Callback] | None = None,
        enable_progress_bar: bool = True,
        enable_checkpointing: bool = True,
        enable_model_summary: bool = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        precision_options: dict[str, Any] | None = None,
        nonfinite: str | NonFinitePolicy = "skip",
        **unknown: Any,
    ) -> None:
        arguments = locals()  # first, so it holds the parameters only
        reject_unknown_arguments(unknown)
        #: The arguments as passed, checked and in canonical form (a test keeps its fields equal to the parameters).
        self.config = config = TrainerConfig(**{name: arguments[name] for name in TrainerConfig.argument_names()})
        #: What the run uses: ``config`` with ``fast_dev_run`` applied. Every setting attribute reads it.
        self.settings = config.for_run()
        registry = get_registry()
        self._registry = registry
        parts = select_parts(config, registry)
        #: Why ``precision="auto"`` chose what it chose (``None`` when a precision was given).
        self.auto_precision_reason: str | None = parts.auto_precision_reason
        self.accelerator = parts.accelerator
        self.precision_plugin = parts.precision
        self.devices = parts.devices
        self.strategy = parts.strategy
        self.callbacks: list[Callback] = [*self.settings.callbacks, *_default_callbacks(self.settings)]

        #: The loop state of the current (or last) run: counters, model, optimizers, metrics.
        self.state = RunState()
        self.state.metrics.strategy = self.strategy  # epoch values are reduced across its processes
        #: The DataModule of the current (or last) run, if any.
        self.datamodule: DataModule | None = None
        #: Batches the current run's loops take per epoch (``inf``: an unsized loader), for progress bars.
        self.num_training_batches: float | None = None
        self.num_val_batches: float | None = None
        self.num_test_batches: float | None = None
        self.num_predict_batches: float | None = None

    # -- the run's settings (read from ``self.settings``; set them through the constructor) ----------------
    max_epochs = Setting()
    min_epochs = Setting()
    max_steps = Setting()
    min_steps = Setting()
    limit_train_batches = Setting()
    limit_val_batches = Setting()
    limit_test_batches = Setting()
    limit_predict_batches = Setting()
    overfit_batches = Setting()
    check_val_every_n_epoch = Setting()
    val_check_interval = Setting()
    num_sanity_val_steps = Setting()
    reload_dataloaders_every_n_epochs = Setting()
    log_every_n_steps = Setting()
    gradient_clip_val = Setting()
    gradient_clip_algorithm = Setting()
    accumulate_grad_batches = Setting()
    fast_dev_run = Setting()
    deterministic = Setting()
    benchmark = Setting()
    enable_progress_bar = Setting()
    enable_checkpointing = Setting()
    enable_model_summary = Setting()
    default_root_dir = Setting()

    @property
    def log_sink(self) -> LoggerGroup | None:
        """Every logger behind one object with the loop's row interface (``None``: no logging)."""
        return self.settings.logger  # type: ignore[no-any-return]

    @property
    def logger(self) -> Any:
        """The first logger (``None``: no logging)."""
        return self.log_sink.loggers[0] if self.log_sink is not None else None

    # -- public state ---------------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """The canonical precision name in use (``"bf16-mixed"`` …)."""
        return self.precision_plugin.name

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Everything logged with ``self.log``: the latest step values and the last epoch means."""
        return self.state.metrics.callback_metrics()

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """What the progress bar shows: the values logged with ``prog_bar=True``."""
        return self.state.metrics.progress_bar_metrics()

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        """What was handed to the loggers, with the ``_step``/``_epoch`` names (Lightning's ``logged_metrics``)."""
        return self.state.metrics.logged_metrics()

    @property
    def progress_bar_callback(self) -> ProgressBarCallback | None:
        """The progress-bar callback of this Trainer (``None`` with ``enable_progress_bar=False``)."""
        return next((c for c in self.callbacks if isinstance(c, ProgressBarCallback)), None)

    @property
    def registry(self) -> Any:
        """The plugin registry this Trainer selected its accelerator, precision and strategy from."""
        return self._registry

    @property
    def loggers(self) -> list[Any]:
        """Every logger of this Trainer."""
        return list(self.log_sink.loggers) if self.log_sink is not None else []

    # -- the run's loop state (``self.state``) and process layout (``self.strategy``), never copied --------------
    global_step: Forwarded[int] = Forwarded("state")
    """Optimizer steps taken so far (what ``max_steps`` counts)."""
    current_epoch: Forwarded[int] = Forwarded("state")
    should_stop: Forwarded[bool] = Forwarded("state", convert=bool)
    """Set it to ``True`` (from a callback or the module) to end ``fit`` after the current batch."""
    sanity_checking: Forwarded[bool] = Forwarded("state")
    """True while the validation sanity check before training runs (callbacks skip their work then)."""
    model: Forwarded[TrainingModule | None] = Forwarded("state")
    optimizers: Forwarded[list[torch.optim.Optimizer]] = Forwarded("state")
    lr_scheduler_configs: Forwarded[list[Any]] = Forwarded("state")
    is_global_zero: Forwarded[bool] = Forwarded("strategy")
    world_size: Forwarded[int] = Forwarded("strategy")
    global_rank: Forwarded[int] = Forwarded("strategy")

    def init_module(self, empty_init: bool | None = None) -> AbstractContextManager[None]:
        """Build modules inside this block to have their parameters born on the device, in the precision's dtype
        (bf16-true never materialises float32 weights). ``empty_init=True`` also skips weight initialisation
        (for weights a checkpoint overwrites next)."""
        return module_init(self.strategy, self.precision_plugin, empty_init)

    # -- entry points ---------------------------------------------------------------------------------------
    def fit(
        self,
        model: TrainingModule,
        train_dataloaders: Iterable[Any] | None = None,
        val_dataloaders: Iterable[Any] | None = None,
        datamodule: DataModule | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train ``model`` on ``train_dataloaders`` (or the datamodule's, or the module's own
        ``train_dataloader()``); validate on the validation loader after each epoch.

        ``ckpt_path`` resumes from a checkpoint written by :meth:`save_checkpoint` (``"last"``: the newest one the
        :class:`prec.ModelCheckpoint` callback wrote): model, optimizers, schedulers, the precision's state (grad
        scaler), loop counters and RNG (see :mod:`prec.training.checkpointing`)."""
        self._launch("fit", model, ckpt_path, datamodule, train_dataloaders, val_dataloaders)

    def validate(
        self,
        model: TrainingModule | None = None,
        dataloaders: Iterable[Any] | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        datamodule: DataModule | None = None,
    ) -> list[dict[str, float]]:
        """Run ``validation_step`` over the loader; return the epoch metrics as a list with one dict per loader
        (as Lightning does). Without ``model``, the Trainer's last one; ``ckpt_path`` (a path, ``"best"`` or
        ``"last"``) loads weights first; ``verbose=False`` leaves the results table out."""
        self.state.verbose = bool(verbose)
        return self._launch("validate", model, ckpt_path, datamodule, dataloaders)  # type: ignore[no-any-return]

    def test(
        self,
        model: TrainingModule | None = None,
        dataloaders: Iterable[Any] | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        datamodule: DataModule | None = None,
    ) -> list[dict[str, float]]:
        """Run ``test_step`` over the loader; return the epoch metrics as a list with one dict per loader. Several
        loaders (a list or dict) pass ``dataloader_idx`` to ``test_step`` and name metrics ``…/dataloader_idx_N``."""
        self.state.verbose = bool(verbose)
        return self._launch("test", model, ckpt_path, datamodule, dataloaders)  # type: ignore[no-any-return]

    def predict(
        self,
        model: TrainingModule | None = None,
        dataloaders: Iterable[Any] | None = None,
        datamodule: DataModule | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> list[Any]:
        """Run ``predict_step`` over the loader; return the outputs, passed through the precision's
        ``convert_output`` (float32 for 16-bit precisions); one list per loader for a list or dict of several,
        with ``dataloader_idx`` passed to ``predict_step``. ``ckpt_path`` loads weights."""
        return self._launch("predict", model, ckpt_path, datamodule, dataloaders)  # type: ignore[no-any-return]

    def _launch(self, stage: str, model: TrainingModule | None, ckpt_path: Any, datamodule: Any, *loaders: Any) -> Any:
        """Run ``stage`` in as many processes as the strategy decides, on the module given (``torch.compile(module)``
        is unwrapped, its forward compiled with the same settings) or the Trainer's last one for evaluation stages."""
        if model is None and stage != "fit":
            if self.model is None:
                raise ConfigurationError(f"{stage}() needs a model: pass one, or call fit() on this Trainer first.")
            model = self.model
        else:
            model = unwrap_compiled(stage, model)
        data = StageData(stage, model, datamodule, *loaders)
        ckpt_path = self._checkpoint_path(stage, check_ckpt_path(stage, ckpt_path))
        return self.strategy.launch(self._run_stage, stage, model, ckpt_path, data)

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps ``fit`` will take (``inf`` for an unsized loader without ``max_steps``); known once a
        run has its training loader (it is read from the last ``fit``)."""
        return self.state.estimated_stepping_batches(self)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint of the current run to ``path`` atomically (global rank zero writes; every process
        must call it). Call it at an optimizer-step boundary: gradients being accumulated are not saved."""
        from prec.training.checkpointing import build_checkpoint

        if self.model is None:
            raise ConfigurationError("save_checkpoint() needs a model: call it during or after fit().")
        state = build_checkpoint(self, self.model, weights=False)
        self.strategy.save_checkpoint(path, state, self.model, self.optimizers)

    def _checkpoint_path(self, stage: str, ckpt_path: Any) -> str | os.PathLike[str] | None:
        """``ckpt_path`` as a file: ``"best"`` is the best checkpoint this Trainer's :class:`prec.ModelCheckpoint`
        kept, ``"last"`` its newest one; anything else is taken as a path. The one place that resolves them."""
        if ckpt_path not in ("best", "last"):
            return ckpt_path  # type: ignore[no-any-return]
        found = [
            callback.best_model_path if ckpt_path == "best" else callback.latest_path
            for callback in self.callbacks
            if isinstance(callback, ModelCheckpoint)
        ]
        found = [path for path in found if path]
        if not found:
            raise ConfigurationError(
                f"{stage}(ckpt_path={ckpt_path!r}) found no checkpoint: no prec.ModelCheckpoint of this Trainer has"
                " saved one yet. Pass a file path, or fit() with checkpointing enabled first."
            )
        return found[0]

    def _run_stage(self, stage: str, model: TrainingModule, ckpt_path: Any, data: StageData) -> Any:
        return run_stage(self, stage, model, ckpt_path, data)

    # -- manual optimization (called through TrainingModule) ----------------------------------------------------
    def manual_optimizers(self) -> list[Any]:
        """The optimizers wrapped for manual optimization (``TrainingModule.optimizers()``)."""
        return self.state.manual_optimizers(lambda optimizer: ManualOptimizer(optimizer, self))

    def clip_gradients(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> torch.Tensor | None:
        """Clip ``optimizer``'s gradients through the precision (unscaled first under a grad scaler), with the
        Trainer's clipping settings unless given here (two different values is an error); returns the total norm."""
        return clip_with_settings(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
