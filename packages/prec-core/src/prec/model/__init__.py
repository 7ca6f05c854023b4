"""What the user writes: ``TrainingModule``, ``DataModule``, hyperparameters and the ``Callback`` interface."""
