"""ModelCheckpoint: save every N steps or at the end of epochs, keep the best K by a monitored metric.

Under several processes every decision is global rank zero's, as in Lightning: each save gathers every rank's
monitored score and file name (one ``Strategy.all_gather_object``, as cheap as a broadcast) and every rank uses rank
zero's, so all ranks keep the same top K, the same ``best_model_path`` and ``kth_best_model_path``, and pass the
same path to the (collective) ``Trainer.save_checkpoint``. A monitored value that differs across ranks (logged with
``sync_dist=False``, or a step value without ``sync_dist=True``) is warned about once.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from prec._warnings import warn
from prec.errors import ConfigurationError, PrecWarning
from prec.loggers._paths import check_path, check_writable
from prec.model.callback import Callback
from prec.training.checks import check_bool, check_choice, check_int, check_metric_name, check_optional_int

if TYPE_CHECKING:
    from prec.model.module import StepOutput, TrainingModule
    from prec.model.trainer_view import TrainerView

_FIELD = re.compile(r"\{([^{}:]+)(:[^{}]*)?\}")


class ModelCheckpoint(Callback):
    """Write checkpoints during ``fit`` with :meth:`prec.Trainer.save_checkpoint` (atomic, rank zero only).

    Args:
        dirpath: the folder; ``None`` uses ``checkpoints`` in the first logger's version folder
            (``{default_root_dir}/prec_logs/version_N/checkpoints`` with the default logger, as in Lightning),
            or ``{default_root_dir}/checkpoints`` without a logger.
        filename: a pattern; ``{epoch}``, ``{step}`` and ``{metric}`` (with an optional format such as
            ``{val_loss:.3f}``) become ``epoch=3``, ``val_loss=0.123``. ``.ckpt`` is appended.
        monitor: the logged metric that ranks checkpoints; ``None`` keeps the most recent ones.
        mode: ``"min"`` or ``"max"``: which way ``monitor`` is better.
        save_top_k: how many checkpoints to keep (``-1``: all, ``0``: none but ``last.ckpt``).
        every_n_train_steps: save every N optimizer steps (then no end-of-epoch saves unless ``every_n_epochs``
            is also given explicitly).
        every_n_epochs: save after every N-th epoch (default 1; ``None`` or ``0``: never at epoch end).
        save_last: also write ``last.ckpt`` on every save.
    """

    is_monitoring_callback = True  # runs after the module's on_train_epoch_end

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "{epoch}-{step}",
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = -1,
        save_last: bool = False,
    ) -> None:
        owner = "ModelCheckpoint"
        dirpath = check_path(f"{owner}(dirpath)", dirpath, none="{default_root_dir}/checkpoints")
        _check_filename(filename)
        monitor = check_metric_name(f"{owner}(monitor)", monitor, optional=True)
        mode = check_choice(f"{owner}(mode)", mode, ("min", "max"))
        save_top_k = check_int(f"{owner}(save_top_k)", save_top_k, -1, "an int >= -1 (-1: keep all)")
        every_n_train_steps = check_optional_int(
            f"{owner}(every_n_train_steps)", every_n_train_steps, 0, "an int >= 0, or None"
        )
        every_n_epochs = check_optional_int(
            f"{owner}(every_n_epochs)", every_n_epochs, -1, "an int >= 0, or None (0 or None: never at epoch end)"
        )
        save_last = check_bool(f"{owner}(save_last)", save_last)
        if every_n_epochs == -1:  # not given: end-of-epoch saves only when no step interval is set
            every_n_epochs = None if every_n_train_steps else 1
        self.dirpath = dirpath
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.every_n_train_steps = every_n_train_steps or None
        self.every_n_epochs = every_n_epochs or None
        self.save_last = save_last
        self.best_k_models: dict[str, float] = {}
        self.recent: list[str] = []
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        #: The newest checkpoint this callback wrote (what ``ckpt_path="last"`` resumes).
        self.latest_path = ""
        self._last_step_saved = -1
        self._warned_unsynced = False

    # -- hooks ----------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: TrainerView, module: TrainingModule, stage: str) -> None:
        """Fix the folder and, before ``fit`` trains, test-write it: a read-only or full disk fails now, not at
        the first save."""
        if self.dirpath is None:  # Lightning's default: the first logger's version folder, so runs never mix
            log_dir = getattr(trainer.logger, "log_dir", None)
            where = Path(log_dir) if log_dir is not None else trainer.default_root_dir
            self.dirpath = Path(trainer.strategy.broadcast(str(where / "checkpoints")))  # rank zero's version
        if stage == "fit" and trainer.is_global_zero:
            check_writable(
                self.dirpath,
                "ModelCheckpoint",
                "Pass a writable ModelCheckpoint(dirpath=...) (or default_root_dir= to the Trainer), free some space,"
                " or pass enable_checkpointing=False.",
            )

    @override
    def on_train_batch_end(
        self, trainer: TrainerView, module: TrainingModule, outputs: StepOutput, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step % self.every_n_train_steps == 0 and step != self._last_step_saved:
            self.save(trainer, trainer.current_epoch)

    @override
    def on_train_epoch_completed(self, trainer: TrainerView, module: TrainingModule) -> None:
        finished = trainer.current_epoch - 1
        if self.every_n_epochs and (finished + 1) % self.every_n_epochs == 0:
            if trainer.global_step != self._last_step_saved:
                self.save(trainer, finished)

    # -- saving ---------------------------------------------------------------------------------------------
    def save(self, trainer: TrainerView, epoch: int) -> None:
        """Save now (if the monitored metric earns a place in the top K) and prune the files that lost it."""
        self._last_step_saved = trainer.global_step
        assert self.dirpath is not None
        metrics = {**trainer.callback_metrics, "step": float(trainer.global_step), "epoch": float(epoch)}
        score: float | None = None
        if self.monitor is not None:
            if self.monitor not in metrics:
                raise ConfigurationError(
                    f"ModelCheckpoint(monitor={self.monitor!r}) found no such logged metric; logged: {sorted(metrics)}."
                )
            score = float(metrics[self.monitor])
            if math.isnan(score):
                score = math.inf if self.mode == "min" else -math.inf
        values = {**{k: float(v) for k, v in metrics.items()}, "epoch": epoch, "step": trainer.global_step}
        path = str(self.dirpath / f"{self._format(values)}.ckpt")
        if trainer.world_size > 1:
            score, path = self._rank_zero_decides(trainer, score, path)
        evicted: list[str] = []
        keep = self.save_top_k != 0
        if keep and score is not None:
            if self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k and path not in self.best_k_models:
                worst = self._worst()
                keep = self._better(score, self.best_k_models[worst])
                if keep:
                    evicted.append(worst)
                    del self.best_k_models[worst]
            if keep:
                self.best_k_models[path] = score
                best = min(self.best_k_models, key=self._rank)
                self.best_model_path, self.best_model_score = best, self.best_k_models[best]
        elif keep:
            if path in self.recent:
                self.recent.remove(path)
            self.recent.append(path)
            if self.save_top_k != -1 and len(self.recent) > self.save_top_k:
                evicted = self.recent[: len(self.recent) - self.save_top_k]
                self.recent = self.recent[len(evicted) :]
            self.best_model_path = path
        if self.save_last:
            self.last_model_path = str(self.dirpath / "last.ckpt")
        if keep:
            trainer.save_checkpoint(path)
            self.latest_path = path
        if self.save_last:
            trainer.save_checkpoint(self.last_model_path)
            self.latest_path = self.last_model_path
        if trainer.is_global_zero:
            for old in evicted:
                if old != path and old != self.last_model_path:
                    _remove(Path(old))

    def _rank_zero_decides(self, trainer: TrainerView, score: float | None, path: str) -> tuple[float | None, str]:
        """Rank zero's score and path, on every rank (a collective: every rank saves at the same steps). Warns
        once when the ranks' monitored values differ: the metric was not synchronised across ranks."""
        entries = trainer.strategy.all_gather_object((score, path))
        chosen_score, chosen_path = entries[0]
        if self.monitor is not None and not self._warned_unsynced:
            if any(other != chosen_score for other, _ in entries):
                self._warned_unsynced = True
                if trainer.is_global_zero:
                    values = ", ".join(f"rank {rank}: {other}" for rank, (other, _) in enumerate(entries))
                    warn(
                        f"ModelCheckpoint(monitor={self.monitor!r}) got a different value on each rank ({values}):"
                        f" the metric is not synchronised across ranks. Checkpoints are ranked by rank 0's value;"
                        f" log it with self.log({self.monitor!r}, ..., sync_dist=True) to rank by the value of"
                        " every rank.",
                        PrecWarning,
                    )
        return chosen_score, chosen_path

    @property
    def kth_best_model_path(self) -> str:
        """The worst of the ``save_top_k`` kept checkpoints (the next to be replaced), as in Lightning."""
        return self._worst() if self.best_k_models else ""

    def _format(self, values: dict[str, float]) -> str:
        def replace(match: re.Match[str]) -> str:
            name, spec = match.group(1), match.group(2) or ""
            if name not in values:
                raise ConfigurationError(
                    f"ModelCheckpoint(filename={self.filename!r}) names {name!r}, which was not logged; logged:"
                    f" {sorted(values)}."
                )
            return f"{name}={format(values[name], spec[1:])}"

        return _FIELD.sub(replace, self.filename).replace("/", "_")

    def _rank(self, path: str) -> float:
        score = self.best_k_models[path]
        return score if self.mode == "min" else -score

    def _worst(self) -> str:
        return max(self.best_k_models, key=self._rank)

    def _better(self, score: float, other: float) -> bool:
        return score < other if self.mode == "min" else score > other

    # -- state ----------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_k_models": dict(self.best_k_models),
            "recent": list(self.recent),
            "best_model_path": self.best_model_path,
            "best_model_score": self.best_model_score,
            "last_model_path": self.last_model_path,
            "latest_path": self.latest_path,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("monitor") != self.monitor:
            return  # a different ranking: start a fresh top K
        self.best_k_models = dict(state_dict.get("best_k_models", {}))
        self.recent = list(state_dict.get("recent", []))
        self.best_model_path = state_dict.get("best_model_path", "")
        self.best_model_score = state_dict.get("best_model_score")
        self.last_model_path = state_dict.get("last_model_path", "")
        self.latest_path = state_dict.get("latest_path", "")


def _check_filename(filename: object) -> None:
    """A pattern of text whose ``{fields}`` are well formed (what is logged is known only when saving)."""
    if not isinstance(filename, str) or not filename.strip() or "\x00" in filename:
        raise ConfigurationError(
            f"ModelCheckpoint(filename={filename!r}) must be a non-empty str pattern such as '{{epoch}}-{{step}}'."
        )
    stray = _FIELD.sub("", filename)
    if "{" in stray or "}" in stray:
        raise ConfigurationError(
            f"ModelCheckpoint(filename={filename!r}) has an unmatched brace; fields look like {{epoch}} or"
            " {val_loss:.3f}."
        )
    for match in _FIELD.finditer(filename):
        if not any(_formats(number, (match.group(2) or ":")[1:]) for number in (0, 0.0)):  # epoch/step are ints
            raise ConfigurationError(
                f"ModelCheckpoint(filename={filename!r}): {match.group(0)} has a format Python cannot apply to a"
                " number; use one such as {val_loss:.3f}."
            )


def _formats(number: float, spec: str) -> bool:
    try:
        format(number, spec)
    except (ValueError, TypeError):
        return False
    return True


def _remove(path: Path) -> None:
    """Delete a checkpoint that lost its place: a file, or the directory a sharded strategy (fsdp) writes."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
