"""A classifier's training loop of your own through the Precision API, for a plugin's tests on real hardware.

The loop a user writes without the Trainer (``docs/index.md``): convert the input, run the forward pass in the
precision's context, cross-entropy on float32 logits, ``backward`` and ``optimizer_step`` through the precision.
A plugin's GPU test builds its model and batch, converts the model, and asserts on the losses this returns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prec.precision import Precision

__all__ = ["train_losses"]


def train_losses(
    precision: Precision, model: torch.nn.Module, inputs: Tensor, labels: Tensor, *, steps: int = 30, lr: float = 1e-3
) -> list[float]:
    """Train ``model`` (already converted by ``precision``) on one batch for ``steps`` steps with AdamW over its
    trainable parameters (a quantizing precision freezes the rest); the loss of each step, read on the host."""
    optimizer = torch.optim.AdamW([param for param in model.parameters() if param.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        with precision.forward_context():
            logits = model(precision.convert_input(inputs))
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        precision.backward(loss, model)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses
