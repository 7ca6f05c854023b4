"""Strategies: how a run is spread over devices and processes (``base`` is one process on one device; ``ddp``,
``fsdp``)."""
