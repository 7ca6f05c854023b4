"""Checkpoint files: atomic writes, content checks, the digest, and sharded (torch.distributed.checkpoint)
directories. What a run saves and resumes is built on top, in ``prec.training.checkpointing``."""
