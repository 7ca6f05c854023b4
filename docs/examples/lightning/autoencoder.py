"""Lightning's README autoencoder with a test step added, ported: only the imports and base-class names changed
(MNIST replaced by synthetic 28x28 images so it runs offline in seconds).

python docs/examples/lightning/autoencoder.py
"""

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

import prec as L  # was: import lightning as L

# define any number of nn.Modules (or use your current ones)
encoder = nn.Sequential(nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 3))
decoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 28 * 28))


# define the LightningModule
class LitAutoEncoder(L.TrainingModule):  # was: L.LightningModule
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def training_step(self, batch, batch_idx):
        # training_step defines the train loop.
        # it is independent of forward
        x, _ = batch
        x = x.view(x.size(0), -1)
        z = self.encoder(x)
        x_hat = self.decoder(z)
        loss = F.mse_loss(x_hat, x)
        # Logging to TensorBoard (if installed) by default
        self.log("train_loss", loss)
        return loss

    def test_step(self, batch, batch_idx):
        x, _ = batch
        x = x.view(x.size(0), -1)
        test_loss = F.mse_loss(self.decoder(self.encoder(x)), x)
        self.log("test_loss", test_loss)

    def configure_optimizers(self):
        optimizer = optim.Adam(self.parameters(), lr=1e-3)
        return optimizer


# init the autoencoder
autoencoder = LitAutoEncoder(encoder, decoder)

# setup data (was: MNIST(os.getcwd(), download=True, transform=ToTensor()))
images = torch.rand(512, 1, 28, 28, generator=torch.Generator().manual_seed(0))
dataset = TensorDataset(images, torch.zeros(512, dtype=torch.long))
train_loader = DataLoader(dataset, batch_size=64)

# train the model (hint: here are some helpful Trainer arguments for rapid idea iteration)
trainer = L.Trainer(limit_train_batches=100, max_epochs=2)
trainer.fit(model=autoencoder, train_dataloaders=train_loader)
results = trainer.test(autoencoder, dataloaders=DataLoader(dataset, batch_size=64))
print(results)
