"""Single-image latency of a classifier: warm-up, then timed runs with ``time.perf_counter``."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .results import LatencyStats
from .session import Classifier


def measure_latency(model: Classifier, image: np.ndarray, *, runs: int = 50, warmup: int = 10,
                    progress: Callable[[int, int, str], None] | None = None,
                    description: str = "latency") -> LatencyStats | None:
    """Time ``session.run`` on one image (batch 1; padded to the static batch if the model has one).

    Args:
        model: the classifier (its session's thread count is what is measured).
        image: float32 (1, C, H, W), already preprocessed.
        runs: timed runs (0 → no measurement, returns None).
        warmup: untimed runs first.
        progress: called as ``progress(advance, warmup + runs, description)``.

    Returns:
        :class:`~.results.LatencyStats` (p50, p90, mean, min in milliseconds; runs), or None when
        runs == 0.
    """
    if runs <= 0:
        return None
    feed = model.feed(model.pad_batch(image[:1]))
    out = [model.output_name]
    run = model.session.run
    total = warmup + runs
    if progress:
        progress(0, total, description)
    for _ in range(warmup):
        run(out, feed)
    if progress and warmup:
        progress(warmup, total, description)
    times = np.empty(runs, np.float64)
    step = max(1, runs // 10)
    for i in range(runs):
        t0 = time.perf_counter()
        run(out, feed)
        times[i] = time.perf_counter() - t0
        if progress and ((i + 1) % step == 0 or i + 1 == runs):
            progress(step if (i + 1) % step == 0 else (i + 1) % step, total, description)
    ms = times * 1e3
    return LatencyStats(p50=float(np.percentile(ms, 50)), p90=float(np.percentile(ms, 90)),
                        mean=float(ms.mean()), min=float(ms.min()), runs=int(runs))
