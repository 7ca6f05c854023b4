"""A tqdm progress bar that refreshes its metrics at most a few times a second (reading them syncs)."""

from __future__ import annotations

import math
import time
from typing import Any

from prec.metrics import MetricStore

_REFRESH_SECONDS = 0.25


class ProgressBar:
    def __init__(self, enabled: bool, metrics: MetricStore) -> None:
        self.enabled = enabled
        self.metrics = metrics
        self.bar: Any = None
        self.last_refresh = 0.0

    def start_epoch(self, epoch: int, total: float) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.close()
        self.bar = tqdm(total=None if total == math.inf else int(total), desc=f"Epoch {epoch}", leave=True)
        self.last_refresh = time.monotonic()

    def advance(self) -> None:
        bar = self.bar
        if bar is None:
            return
        bar.update(1)
        now = time.monotonic()
        if now - self.last_refresh >= _REFRESH_SECONDS:
            self.last_refresh = now
            metrics = self.metrics.progress_bar_metrics()
            if metrics:
                bar.set_postfix(metrics, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            metrics = self.metrics.progress_bar_metrics()
            if metrics:
                self.bar.set_postfix(metrics, refresh=False)
            self.bar.close()
            self.bar = None
