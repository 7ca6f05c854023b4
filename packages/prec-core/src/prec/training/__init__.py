"""The training run: the Trainer's configuration, selection, run state, fit/evaluation loops, optimizer
plumbing, metric store, the model summary, checkpointing of a run, and the composition root that builds the
registry with prec-core's built-in strategies."""
