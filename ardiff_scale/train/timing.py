"""Time spans of device work, measured without making the host wait for the device.

On CUDA a mark is an event recorded in the stream; the spans are read when the logging window ends, after
one synchronisation, so forward+backward and optimizer times are device times and the host is never held
back in between. On a CPU the work is synchronous and a mark is simply the clock.
"""

from __future__ import annotations

import time

import torch


class SpanClock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[str, object, object]] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def span(self, name: str, start, end) -> None:
        self.pending.append((name, start, end))

    def collect(self) -> dict[str, float]:
        """Seconds per span name since the last call."""
        totals: dict[str, float] = {}
        if self.cuda and self.pending:
            self.pending[-1][2].synchronize()
        for name, start, end in self.pending:
            seconds = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            totals[name] = totals.get(name, 0.0) + seconds
        self.pending.clear()
        return totals
