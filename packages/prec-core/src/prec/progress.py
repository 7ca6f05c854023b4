"""A tqdm progress bar that refreshes its metrics at most a few times a second (reading them syncs)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from prec.metrics import MetricStore

_REFRESH_SECONDS = 0.25


class ProgressBar:
    def __init__(self, enabled: bool, metrics: MetricStore, on_refresh: Callable[[], None] | None = None) -> None:
        self.enabled = enabled
        self.metrics = metrics
        self.on_refresh = on_refresh  # called before each refresh (records the loss scale under a scaler)
        self.bar: Any = None
        self.last_refresh = 0.0

    def start_epoch(self, epoch: int, total: float, initial: int = 0) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.close()
        self.bar = tqdm(total=None if total == math.inf else int(total), desc=f"Epoch {epoch}", leave=True)
        if initial:  # a resumed epoch starts where the checkpoint left it
            self.bar.update(initial)
        self.last_refresh = time.monotonic()

    def advance(self) -> None:
        bar = self.bar
        if bar is None:
            return
        bar.update(1)
        now = time.monotonic()
        if now - self.last_refresh >= _REFRESH_SECONDS:
            self.last_refresh = now
            if self.on_refresh is not None:
                self.on_refresh()
            metrics = self.metrics.progress_bar_metrics()
            if metrics:
                bar.set_postfix(metrics, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            if self.on_refresh is not None:
                self.on_refresh()
            metrics = self.metrics.progress_bar_metrics()
            if metrics:
                self.bar.set_postfix(metrics, refresh=False)
            self.bar.close()
            self.bar = None
