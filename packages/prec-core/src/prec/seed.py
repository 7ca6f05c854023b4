"""Reproducible runs: ``seed_everything`` (Python, NumPy, torch and DataLoader workers) and deterministic mode.

``seed_everything(seed, workers=True)`` sets ``PREC_SEED_WORKERS=1``; the Trainer's DataLoader path then gives
every ``DataLoader`` without a ``worker_init_fn`` :func:`worker_init_fn`, which seeds Python, NumPy and torch in
each worker from the loader's base seed, the worker id and the process rank, so workers never share a NumPy
stream and a rerun draws the same numbers. ``PREC_GLOBAL_SEED`` carries the seed to processes launched later.
"""

from __future__ import annotations

import os
import random
import sys
from functools import partial
from types import TracebackType
from typing import Any, Literal

import torch

from prec._warnings import warn
from prec.errors import ConfigurationError, PrecWarning

SEED_ENV = "PREC_GLOBAL_SEED"
WORKERS_ENV = "PREC_SEED_WORKERS"
_MAX_SEED = 2**32 - 1  # what numpy.random.seed accepts
#: What ``deterministic=True`` needs for cuBLAS (CUDA >= 10.2); set only when the user has not set it.
CUBLAS_WORKSPACE = ":4096:8"
DeterministicMode = bool | Literal["warn"] | None


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seed Python's ``random``, NumPy (when installed) and torch (CPU and every CUDA device); return the seed.

    ``seed=None`` reads ``PREC_GLOBAL_SEED`` (else 0, with a warning). ``workers=True`` also seeds DataLoader
    workers distinctly (see the module docs)."""
    if seed is None:
        text = os.environ.get(SEED_ENV)
        try:
            seed = int(text) if text is not None else None
        except ValueError:
            seed = None
        if seed is None:
            warn(f"seed_everything() found no seed ({SEED_ENV}={text!r}): using 0.", PrecWarning)
            seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigurationError(f"seed_everything(seed={seed!r}) takes an int in [0, {_MAX_SEED}].")
    if not 0 <= seed <= _MAX_SEED:
        raise ConfigurationError(f"seed_everything(seed={seed}) must lie in [0, {_MAX_SEED}] (NumPy's range).")
    os.environ[SEED_ENV] = str(seed)
    os.environ[WORKERS_ENV] = "1" if workers else "0"
    random.seed(seed)
    numpy = _numpy()
    if numpy is not None:
        numpy.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def worker_init_fn(worker_id: int, rank: int = 0) -> None:
    """Seed a DataLoader worker: torch, Python and NumPy from the loader's base seed, ``worker_id`` and ``rank``.

    torch gives each worker ``base_seed + worker_id``; backing the worker id out recovers the base seed (drawn
    from the parent's RNG, so reproducible after ``seed_everything``), and a NumPy ``SeedSequence`` of (base
    seed, worker, rank) spreads it into independent streams for all three generators."""
    base_seed = torch.initial_seed() - worker_id
    numpy = _numpy()
    if numpy is not None:
        sequence = numpy.random.SeedSequence([base_seed & _MAX_SEED, base_seed >> 32, worker_id, rank])
        torch_seed, python_seed = sequence.generate_state(2, dtype=numpy.uint64).tolist()
        numpy.random.seed(sequence.spawn(1)[0].generate_state(4))
    else:
        mixer = random.Random(f"{base_seed}/{worker_id}/{rank}")  # str seeds hash deterministically (SHA-512)
        torch_seed, python_seed = mixer.getrandbits(64), mixer.getrandbits(64)
    torch.manual_seed(torch_seed)
    random.seed(python_seed)


def attach_worker_init_fn(loader: Any, rank: int = 0) -> bool:
    """Give ``loader`` (a ``DataLoader`` with workers and no ``worker_init_fn``) :func:`worker_init_fn` when
    ``seed_everything(workers=True)`` ran; return whether it did. A user's own ``worker_init_fn`` is kept."""
    if os.environ.get(WORKERS_ENV) != "1" or not isinstance(loader, torch.utils.data.DataLoader):
        return False
    if loader.worker_init_fn is not None or loader.num_workers == 0:
        return False
    loader.worker_init_fn = partial(worker_init_fn, rank=rank)
    return True


class Deterministic:
    """``Trainer(deterministic=...)`` for one run: a context manager that sets torch's deterministic flags and
    restores the previous ones on exit.

    ``True``: ``torch.use_deterministic_algorithms(True)`` (an op with no deterministic version raises),
    ``cudnn.deterministic=True``, ``cudnn.benchmark=False`` and ``CUBLAS_WORKSPACE_CONFIG`` (if unset).
    ``"warn"``: the same, but such ops warn instead of raising. ``False``: deterministic algorithms off.
    ``None``: nothing changes.
    """

    def __init__(self, mode: DeterministicMode = None) -> None:
        self.mode = check_deterministic(mode)
        self._saved: dict[str, Any] | None = None

    def __enter__(self) -> Deterministic:
        if self.mode is None:
            return self
        cudnn = torch.backends.cudnn
        self._saved = {
            "algorithms": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_deterministic": cudnn.deterministic,
            "cudnn_benchmark": cudnn.benchmark,
            "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        }
        torch.use_deterministic_algorithms(bool(self.mode), warn_only=self.mode == "warn")
        if self.mode:
            cudnn.deterministic = True
            cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        torch.use_deterministic_algorithms(saved["algorithms"], warn_only=saved["warn_only"])
        torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
        torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
        if saved["cublas"] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved["cublas"]


def check_deterministic(mode: Any) -> DeterministicMode:
    """``mode`` if it is a valid ``deterministic=`` value, else a ConfigurationError naming what is accepted."""
    if mode is None or isinstance(mode, bool) or mode == "warn":
        return mode  # type: ignore[no-any-return]
    raise ConfigurationError(f"deterministic={mode!r} must be True, False, 'warn' or None.")


def _numpy() -> Any:
    """NumPy if it is installed (imported here: seeding must cover it even before the user imports it)."""
    if "numpy" in sys.modules:
        return sys.modules["numpy"]
    try:
        import numpy
    except ImportError:
        return None
    return numpy
