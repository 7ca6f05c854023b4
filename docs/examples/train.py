"""Train a small regression model with prec at a chosen precision.

python docs/examples/train.py --precision bf16-mixed --accelerator cpu --epochs 2
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

import prec


class Net(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(32, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def forward(self, x):
        return self.layer(x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    features = torch.randn(256, 32)
    targets = features @ torch.randn(32, 1) + 0.1 * torch.randn(256, 1)
    loader = DataLoader(TensorDataset(features, targets), batch_size=32)

    trainer = prec.Trainer(accelerator=args.accelerator, precision=args.precision, max_epochs=args.epochs)
    trainer.fit(Net(), loader)
    loss = trainer.callback_metrics["loss"].item()
    print(f"trained at {trainer.precision} on {trainer.accelerator.name}: {trainer.global_step} steps, loss {loss:.4f}")


if __name__ == "__main__":
    main()
