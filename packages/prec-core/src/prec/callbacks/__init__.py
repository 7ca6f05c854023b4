"""Callbacks that ship with prec (checkpointing, early stopping, fine-tuning, LR monitor, progress bars). They
sit above the training loop, which imports none of them; the Trainer picks the default ones."""
