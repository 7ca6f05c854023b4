"""Lightning's backbone image classifier with a DataModule, ported: only the imports and base-class names
changed (MNIST replaced by synthetic 28x28 images in two classes so it runs offline in seconds, and Lightning's
LightningCLI, which prec does not have, replaced by the Trainer calls it makes).

python docs/examples/lightning/image_classifier.py
"""

from typing import Optional

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split

import prec as L  # was: import lightning as L
from prec import ModelCheckpoint  # was: from lightning.pytorch.callbacks import ModelCheckpoint


class Backbone(torch.nn.Module):
    def __init__(self, hidden_dim=128):
        super().__init__()
        self.l1 = torch.nn.Linear(28 * 28, hidden_dim)
        self.l2 = torch.nn.Linear(hidden_dim, 10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = torch.relu(self.l1(x))
        return torch.relu(self.l2(x))


class LitClassifier(L.TrainingModule):  # was: L.LightningModule
    def __init__(self, backbone: Optional[Backbone] = None, learning_rate: float = 0.0001):  # noqa: UP045 (Lightning's code)
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        if backbone is None:
            backbone = Backbone()
        self.backbone = backbone

    def forward(self, x):
        # use forward for inference/predictions
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = F.cross_entropy(y_hat, y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = F.cross_entropy(y_hat, y)
        self.log("valid_loss", loss, on_step=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = F.cross_entropy(y_hat, y)
        self.log("test_loss", loss)

    def predict_step(self, batch, batch_idx, dataloader_idx=None):
        x, y = batch
        return self(x)

    def configure_optimizers(self):
        # self.hparams available because we called self.save_hyperparameters()
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


class MyDataModule(L.DataModule):  # was: L.LightningDataModule
    def __init__(self, batch_size: int = 32):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str):
        generator = torch.Generator().manual_seed(0)
        labels = torch.randint(0, 2, (640,), generator=generator)
        images = torch.rand(640, 1, 28, 28, generator=generator) * 0.5 + labels.view(-1, 1, 1, 1) * 0.5
        dataset = TensorDataset(images, labels)  # instead of MNIST(...)
        self.mnist_test, self.mnist_predict = dataset, dataset
        self.mnist_train, self.mnist_val = random_split(dataset, [512, 128], generator=generator)

    def train_dataloader(self):
        return DataLoader(self.mnist_train, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.mnist_val, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.mnist_test, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.mnist_predict, batch_size=self.batch_size)


# Lightning's example starts with LightningCLI(LitClassifier, MyDataModule, ...), which prec does not have; these
# are the calls it makes.
model = LitClassifier(learning_rate=1e-3)
dm = MyDataModule()
trainer = L.Trainer(max_epochs=2, callbacks=[ModelCheckpoint(monitor="valid_loss")])
trainer.fit(model, datamodule=dm)
trainer.test(ckpt_path="best", datamodule=dm)
predictions = trainer.predict(ckpt_path="best", datamodule=dm)
print(len(predictions), tuple(predictions[0].shape))
