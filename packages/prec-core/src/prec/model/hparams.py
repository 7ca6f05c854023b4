"""``save_hyperparameters``: record a module's ``__init__`` arguments, save them in checkpoints, rebuild from them.

As in Lightning, the arguments are read from the caller's ``__init__`` frame (and the ``__init__`` frames of the
subclasses that called it through ``super().__init__``), so ``self.save_hyperparameters()`` needs no arguments.
Checkpoints are read with ``torch.load(weights_only=True)``, so only plain containers go into them
(:func:`checkpoint_hparams`); a value that cannot be stored is left out with a warning naming it, never silently.
"""

from __future__ import annotations

import copy
import inspect
import os
import types
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from prec._warnings import warn
from prec.errors import CheckpointError, ConfigurationError, PrecWarning

#: The checkpoint key (Lightning's), so checkpoints written by either carry their hyperparameters the same way.
CHECKPOINT_KEY = "hyper_parameters"
_STORE = "_prec_hparams"  # attributes this module alone reads and writes on the object
_INITIAL = "_prec_hparams_initial"
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)

if TYPE_CHECKING:
    from prec.model.kept_float32 import KeepFloat32
    from prec.precision.policy import ModulePolicy

Built = TypeVar("Built")


class AttributeDict(dict[str, Any]):
    """A dict whose keys are also attributes: ``hparams.lr`` is ``hparams["lr"]``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as error:
            raise AttributeError(f"no hyperparameter {key!r}; saved: {sorted(self)}") from error

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]

    def __repr__(self) -> str:
        if not self:
            return "AttributeDict()"
        width = max(len(str(key)) for key in self)
        return "\n".join(f'"{key}":{" " * (width - len(str(key)))} {value!r}' for key, value in sorted(self.items()))


def save_hyperparameters(
    obj: Any, *args: Any, ignore: str | Sequence[str] | None = None, frame: types.FrameType | None = None
) -> None:
    """Store ``obj``'s ``__init__`` arguments as ``obj.hparams`` (all of them, or the names in ``args``, or the
    one dict/Namespace in ``args``), leaving out ``ignore``. ``frame`` is the ``__init__`` frame to read; by
    default the caller's."""
    if len(args) == 1 and not isinstance(args[0], str) and not args[0]:
        return  # an empty container: nothing to save
    if frame is None:
        current = inspect.currentframe()
        frame = current.f_back if current is not None else None
    if not isinstance(frame, types.FrameType):
        raise ConfigurationError("save_hyperparameters() found no calling frame; pass frame=inspect.currentframe().")
    init_args: dict[str, Any] = {}
    for arguments in _collect_init_args(frame, type(obj)):
        init_args.update(arguments)
    ignored = {ignore} if isinstance(ignore, str) else {name for name in ignore or () if isinstance(name, str)}
    init_args = {key: value for key, value in init_args.items() if key not in ignored}
    if not args:
        chosen: Any = init_args
    else:
        objects = [arg for arg in args if not isinstance(arg, str)]
        if len(objects) == 1 and len(args) == 1:
            chosen = objects[0]
        elif objects:
            raise ConfigurationError(
                f"save_hyperparameters() takes argument names or one dict/Namespace, not {objects!r} with names."
            )
        else:
            unknown = [name for name in args if name not in init_args]
            if unknown:
                raise ConfigurationError(
                    f"save_hyperparameters({', '.join(map(repr, args))}): {unknown} are not arguments of"
                    f" {type(obj).__name__}.__init__ (or are ignored); it takes {sorted(init_args)}."
                )
            chosen = {name: init_args[name] for name in args}
    hparams = _as_attribute_dict(chosen)
    for key, value in hparams.items():
        if isinstance(value, torch.nn.Module):
            warn(
                f"hyperparameter {key!r} is a torch.nn.Module, whose weights are already in the checkpoint's"
                f" state_dict: pass ignore=[{key!r}] to save_hyperparameters().",
                PrecWarning,
            )
    _unstorable({k: v for k, v in hparams.items() if not isinstance(v, torch.nn.Module)}, warn_now=True)
    object.__setattr__(obj, _STORE, hparams)
    object.__setattr__(obj, _INITIAL, copy.deepcopy(hparams))


def hparams_of(obj: Any) -> AttributeDict:
    """``obj.hparams``: what ``save_hyperparameters`` stored (an empty dict, kept, when it was never called)."""
    hparams = obj.__dict__.get(_STORE)
    if hparams is None:
        hparams = AttributeDict()
        object.__setattr__(obj, _STORE, hparams)
    return hparams


def hparams_initial_of(obj: Any) -> AttributeDict:
    """A copy of the hyperparameters as ``save_hyperparameters`` saw them (later edits to ``hparams`` excluded)."""
    return copy.deepcopy(obj.__dict__.get(_INITIAL) or AttributeDict())


def checkpoint_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The plain-container dict a checkpoint stores under :data:`CHECKPOINT_KEY`: values that
    ``torch.load(weights_only=True)`` cannot read back are left out, each with a warning naming it."""
    left_out = _unstorable(hparams, warn_now=True)
    return {key: _plain(value) for key, value in hparams.items() if key not in left_out}


def load_from_checkpoint(
    cls: type[Built],
    checkpoint_path: str | os.PathLike[str],
    *,
    strict: bool = True,
    dtype: torch.dtype | str | None = None,
    precision: str | None = None,
    keep_float32: KeepFloat32 | None = None,
    **overrides: Any,
) -> Built:
    """Build ``cls(**saved hyperparameters, **overrides)`` and load the checkpoint's weights into it (on the CPU;
    move it afterwards). ``overrides`` supply what was ignored or could not be saved.

    ``dtype`` (or ``precision``, a precision name standing for its weights' dtype: ``"bf16-true"`` is bfloat16,
    a mixed precision float32) builds the model in that dtype directly: on the meta device, then the checkpoint's
    tensors cast once and assigned, so a float32 copy of the model never exists. Weights that a bf16-true
    checkpoint refines with ``master_weights`` load at their full float32 value when the dtype is wider.

    ``keep_float32`` (module classes and name patterns, as the precision option) keeps those modules float32 in
    that dtype, as the precision did in training. By default, loading at a 16-bit dtype keeps the modules a 16-bit
    run kept (the checkpoint stores them in float32) and logs them once; ``keep_float32=()`` casts everything."""
    from prec.checkpoint.io import read_checkpoint
    from prec.model.kept_float32 import explicit_policy, log_recorded

    target = weights_dtype(dtype, precision)
    policy = explicit_policy(keep_float32) if keep_float32 is not None else None
    checkpoint = read_checkpoint(checkpoint_path)
    saved = dict(checkpoint.get(CHECKPOINT_KEY) or {})
    arguments = {**saved, **overrides}
    if target is None:
        model = _build(cls, checkpoint_path, saved, arguments)
        _call_load_hook(model, checkpoint)
        result = model.load_state_dict(_cast_for(model, checkpoint), strict=strict)
    else:
        model, result, kept = _load_in_dtype(cls, checkpoint_path, checkpoint, saved, arguments, target, strict, policy)
        if policy is None:
            log_recorded(kept, target)
    if not strict and (result.missing_keys or result.unexpected_keys):
        warn(
            f"load_from_checkpoint(strict=False): {len(result.missing_keys)} missing and"
            f" {len(result.unexpected_keys)} unexpected keys in {checkpoint_path}.",
            PrecWarning,
        )
    return model


#: Each canonical precision's weight dtype (mixed precisions keep float32 weights).
PRECISION_WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "16-mixed": torch.float32,
    "bf16-mixed": torch.float32,
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
    "32-true": torch.float32,
    "64-true": torch.float64,
}
_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def weights_dtype(dtype: torch.dtype | str | None = None, precision: str | None = None) -> torch.dtype | None:
    """The dtype ``load_from_checkpoint(dtype=..., precision=...)`` builds the model in (``None``: as built).
    A plugin's precision name counts by its suffix: ``*-mixed`` is float32, ``*bf16-true`` bfloat16."""
    from prec.names import normalize_precision

    chosen: torch.dtype | None = None
    if dtype is not None:
        chosen = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
        if chosen not in _FLOATING:
            raise ConfigurationError(
                f"load_from_checkpoint(dtype={dtype!r}): dtype must be a floating torch.dtype, one of"
                f" {', '.join(map(str, _FLOATING))} (or its name, such as 'bfloat16')."
            )
    if precision is None:
        return chosen
    if isinstance(precision, str) and precision.endswith("-mixed") and precision not in PRECISION_WEIGHT_DTYPES:
        from_precision = torch.float32
    elif isinstance(precision, str) and precision.endswith("bf16-true") and precision not in PRECISION_WEIGHT_DTYPES:
        from_precision = torch.bfloat16
    else:
        try:
            name = normalize_precision(precision)
        except ConfigurationError as error:
            raise ConfigurationError(f"load_from_checkpoint(precision=...): {error}") from error
        if name not in PRECISION_WEIGHT_DTYPES:
            raise ConfigurationError(
                f"load_from_checkpoint(precision={precision!r}) names no weight dtype; use one of"
                f" {', '.join(PRECISION_WEIGHT_DTYPES)}, or pass dtype=."
            )
        from_precision = PRECISION_WEIGHT_DTYPES[name]
    if chosen is not None and chosen != from_precision:
        raise ConfigurationError(
            f"load_from_checkpoint(dtype={dtype!r}, precision={precision!r}): the precision's weights are"
            f" {from_precision}, not {chosen}; pass one of the two."
        )
    return from_precision


def _load_in_dtype(
    cls: type[Built],
    checkpoint_path: str | os.PathLike[str],
    checkpoint: dict[str, Any],
    saved: dict[str, Any],
    arguments: dict[str, Any],
    target: torch.dtype,
    strict: bool,
    policy: ModulePolicy | None,
) -> tuple[Built, Any, list[str]]:
    """Build on the meta device in ``target``, keep ``policy``'s modules float32 (``None``: those the checkpoint
    stores so, at a 16-bit ``target``), cast the checkpoint's tensors once, assign them. A model that left tensors
    the checkpoint does not hold (non-persistent buffers) is rebuilt for real in ``target``."""
    from prec.model.kept_float32 import apply_policy, recorded_policy
    from prec.precision.base import default_dtype

    try:
        with torch.device("meta"), default_dtype(target):
            model: Any = _build(cls, checkpoint_path, saved, arguments)
    except (NotImplementedError, RuntimeError):  # an __init__ that needs real values (``.item()``) on meta
        model = None
    built = model if model is not None else _build_real(cls, checkpoint_path, saved, arguments, target)
    _call_load_hook(built, checkpoint)
    policy = policy if policy is not None else recorded_policy(built, checkpoint, target)
    kept = apply_policy(built, policy, target)
    state = _cast_for(built, checkpoint)
    result = built.load_state_dict(state, strict=strict, assign=True)
    if any(value.is_meta for value in [*built.parameters(), *built.buffers()]):
        built = _build_real(cls, checkpoint_path, saved, arguments, target)
        _call_load_hook(built, checkpoint)
        kept = apply_policy(built, policy, target)
        result = built.load_state_dict(state, strict=strict, assign=True)
    return built, result, kept


def _cast_for(model: torch.nn.Module, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's tensors in the dtypes of ``model``'s, each cast once (refined float32 values where the
    model's dtype is not the one training kept)."""
    from prec.checkpoint.effective import cast_state

    dtypes = {name: value.dtype for name, value in model.state_dict().items() if value.is_floating_point()}
    return cast_state(checkpoint, dtypes, [name for name, _ in model.named_parameters()])


def _build_real(
    cls: type[Built], path: str | os.PathLike[str], saved: dict[str, Any], arguments: dict[str, Any], target: Any
) -> Any:
    from prec.precision.base import default_dtype

    with default_dtype(target):
        return _build(cls, path, saved, arguments)


def _build(cls: type[Built], path: str | os.PathLike[str], saved: dict[str, Any], arguments: dict[str, Any]) -> Any:
    """``cls(**arguments)``, then ``configure_model()`` (layers built there must exist before their weights load)."""
    try:
        model: Any = cls(**arguments)
    except TypeError as error:
        raise CheckpointError(
            f"cannot build {cls.__name__} from checkpoint {path}: {error}. Saved hyperparameters:"
            f" {sorted(saved)}; pass what is missing as keyword arguments to load_from_checkpoint()."
        ) from error
    configure = getattr(model, "configure_model", None)
    if callable(configure):
        configure()
    if not isinstance(model, torch.nn.Module):
        raise CheckpointError(f"{cls.__name__} is not a torch.nn.Module; its weights cannot be loaded.")
    return model


def _call_load_hook(model: Any, checkpoint: dict[str, Any]) -> None:
    hook = getattr(model, "on_load_checkpoint", None)
    if callable(hook):
        hook(checkpoint)


class HyperparametersMixin:
    """``save_hyperparameters()``, ``hparams`` and ``hparams_initial`` for a class (TrainingModule, DataModule)."""

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: str | Sequence[str] | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Store the ``__init__`` arguments as ``self.hparams`` (saved in checkpoints). ``logger`` is accepted
        for Lightning code; prec's loggers record metrics only."""
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        save_hyperparameters(self, *args, ignore=ignore, frame=frame)

    @property
    def hparams(self) -> AttributeDict:
        return hparams_of(self)

    @property
    def hparams_initial(self) -> AttributeDict:
        return hparams_initial_of(self)


# -- helpers ---------------------------------------------------------------------------------------------------
def _collect_init_args(frame: types.FrameType, kind: type) -> list[dict[str, Any]]:
    """The arguments of each ``__init__`` frame of ``kind``'s class hierarchy, innermost first (Lightning's walk:
    a frame belongs to a class ``__init__`` when it has the ``__class__`` cell ``super()`` creates)."""
    collected: list[dict[str, Any]] = []
    current: types.FrameType | None = frame
    inside = False
    while current is not None and current.f_back is not None:
        local_vars = current.f_locals
        owner = local_vars.get("__class__")
        if isinstance(owner, type) and current.f_code.co_name == "__init__" and issubclass(kind, owner):
            collected.append(_init_args(current, owner))
            inside = True
        elif inside:
            break
        current = current.f_back
    return collected


def _init_args(frame: types.FrameType, owner: type) -> dict[str, Any]:
    local_vars = frame.f_locals
    parameters = inspect.signature(owner.__init__).parameters  # type: ignore[misc]
    arguments: dict[str, Any] = {}
    for position, (name, parameter) in enumerate(parameters.items()):
        if position == 0 or name not in local_vars:
            continue  # self
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(local_vars[name])
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            arguments[name] = local_vars[name]
    return arguments


def _as_attribute_dict(value: Any) -> AttributeDict:
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return AttributeDict(value)
    raise ConfigurationError(
        f"save_hyperparameters() takes argument names, a dict or a Namespace; {type(value).__name__} is not allowed."
    )


def _storable(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_storable(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, (str, int)) and _storable(item) for key, item in value.items())
    return False


def _unstorable(hparams: Mapping[str, Any], warn_now: bool) -> set[str]:
    left_out = {key for key, value in hparams.items() if not _storable(value)}
    if warn_now:
        for key in sorted(left_out):
            warn(
                f"hyperparameter {key!r} ({type(hparams[key]).__name__}) cannot be stored in a checkpoint (only"
                " numbers, strings, tensors and lists/dicts of them load with weights_only=True): it is left out"
                f" of checkpoints; pass {key}=... to load_from_checkpoint().",
                PrecWarning,
            )
    return left_out


def _plain(value: Any) -> Any:
    """Plain containers only (an AttributeDict or OrderedDict becomes a dict, a tensor is detached)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
