"""The models ``prec bench`` and ``prec summary`` measure: small built-in ones, or a user's ``module.path:factory``,
and the accelerator and precisions they are measured on.

A factory returns ``(prec.TrainingModule, list_of_batches)``. Torch is imported inside the functions, so listing
the command costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prec.errors import ConfigurationError
from prec.names import readable_list

if TYPE_CHECKING:
    import torch

    from prec.accelerator import Accelerator
    from prec.model.module import TrainingModule

#: Per built-in model: (steps timed, warm-up steps). Small enough for a CPU to finish in seconds.
MODEL_DEFAULTS: dict[str, tuple[int, int]] = {
    "mlp-small": (200, 20),
    "mlp-mid": (6, 2),
    "transformer-small": (30, 5),
}


# -- models ---------------------------------------------------------------------------------------------------
def _regression(net: torch.nn.Module, batches: list[Any], lr: float) -> tuple[TrainingModule, list[Any]]:
    import torch

    from prec.model.module import TrainingModule

    class Regression(TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x).float(), y.float())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Regression(), batches


def _mlp(sizes: Sequence[int], batch_size: int, lr: float, n_batches: int = 4) -> tuple[TrainingModule, list[Any]]:
    import torch

    layers: list[torch.nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(width_in, width_out))
        if index < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    target = torch.nn.Linear(sizes[0], sizes[-1])  # a learnable teacher, so the loss falls
    with torch.no_grad():
        batches = []
        for _ in range(n_batches):
            x = torch.randn(batch_size, sizes[0])
            batches.append((x, target(x)))
    return _regression(torch.nn.Sequential(*layers), batches, lr)


def mlp_small() -> tuple[TrainingModule, list[Any]]:
    """32 -> 64 -> 1, batch 32: measures per-step overhead more than arithmetic."""
    return _mlp((32, 64, 1), batch_size=32, lr=0.05)


def mlp_mid() -> tuple[TrainingModule, list[Any]]:
    """1024 -> 4096 -> 4096 -> 1024, batch 256: matrix multiplies dominate, as in real training."""
    return _mlp((1024, 4096, 4096, 1024), batch_size=256, lr=0.01, n_batches=2)


def transformer_small() -> tuple[TrainingModule, list[Any]]:
    """A 2-layer, 128-wide transformer encoder on next-token prediction (vocabulary 512, sequence 64)."""
    import torch

    from prec.model.module import TrainingModule

    vocab, width, sequence, batch_size = 512, 128, 64, 16

    class TinyLM(TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, width)
            layer = torch.nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(width, vocab)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            tokens = batch
            mask = torch.nn.Transformer.generate_square_subsequent_mask(sequence - 1, device=tokens.device)
            hidden = self.encoder(self.embed(tokens[:, :-1]), mask=mask, is_causal=True)
            logits = self.head(hidden).float()
            return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    base = torch.arange(sequence) % 17  # a learnable periodic pattern, shifted per sample
    batches = [(base + torch.randint(0, vocab - 17, (batch_size, 1))) % vocab for _ in range(4)]
    return TinyLM(), batches


BUILTIN_MODELS: dict[str, Callable[[], tuple[TrainingModule, list[Any]]]] = {
    "mlp-small": mlp_small,
    "mlp-mid": mlp_mid,
    "transformer-small": transformer_small,
}


def resolve_model(spec: str, label: str = "--model") -> Callable[[], tuple[TrainingModule, list[Any]]]:
    """A built-in model name, or ``package.module:factory`` returning ``(TrainingModule, list_of_batches)``;
    ``label`` names the command-line argument in errors."""
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec]
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"{label} {spec!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor 'package.module:factory'."
        )
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigurationError(f"{label} {spec!r} cannot be loaded: {error}") from error
    if not callable(factory):
        raise ConfigurationError(f"{label} {spec!r} names {type(factory).__name__}, not a callable factory.")
    return factory


def build_model(
    factory: Callable[[], Any], spec: str, seed: int, label: str = "--model"
) -> tuple[TrainingModule, list[Any]]:
    import torch

    from prec.model.module import TrainingModule

    torch.manual_seed(seed)
    built = factory()
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], TrainingModule)):
        raise ConfigurationError(
            f"{label} {spec!r}: the factory must return (prec.TrainingModule, list_of_batches); got {type(built)}."
        )
    batches = list(built[1])
    if not batches:
        raise ConfigurationError(f"{label} {spec!r}: the factory returned no batches.")
    return built[0], batches


def select_targets(accelerator_name: str, precisions: Sequence[str] | None) -> tuple[Accelerator, list[str]]:
    """The installed accelerator (``"auto"``: the registry's choice) and the precisions to measure on it: the
    ones named (normalised, each checked to run there) or, for ``None``, all it offers in the registry's order."""
    from prec.training.composition import get_registry

    registry = get_registry()
    accelerator = registry.available_accelerator(accelerator_name) if accelerator_name != "auto" else None
    accelerator = accelerator or registry.auto_accelerator()
    available = registry.supported_precisions(accelerator.name)
    chosen = list(available) if precisions is None else [registry.normalize(name) for name in precisions]
    for name in chosen:
        if name not in available:
            registry.precision_entry(name, accelerator.name)  # raises the Trainer's reason, with what to install
    missing = [name for name in chosen if name not in available]
    if missing:  # registered, but not among the pairs this accelerator offers here
        raise ConfigurationError(
            f"precision {', '.join(map(repr, missing))} is not available on {accelerator.name};"
            f" available: {readable_list(available)}."
        )
    return accelerator, chosen
