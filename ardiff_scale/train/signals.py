"""Preemption: the signals a scheduler sends before it stops a job, turned into a flag the loop checks.

SIGTERM is what Kubernetes, Slurm (`scancel`, the end of a time limit) and most schedulers send first;
Slurm sends SIGUSR1 ahead of time when asked (`#SBATCH --signal=USR1@120`). The handler only records the
signal: the loop finishes its step, every rank agrees, a checkpoint is written, and the process exits with
`PREEMPTED_EXIT` so that a wrapper can tell a preemption from a failure.
"""

from __future__ import annotations

import signal
import threading


class StopSignals:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name

    def install(self) -> None:
        """Only the main thread may set handlers (a Ray worker's training thread is not it: there Ray's
        own restart on failure applies)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
