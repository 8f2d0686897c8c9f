"""Load progress as it happens, for whoever runs the migration in this process (`make demo`'s live view).

The load step reports the units of each bundle once their outcomes are stored; listeners registered with `listening()`
hear of it from the step's own thread. Why a process-level hook rather than Dagster's event log: the demo
runs its jobs in process, so a plain call reaches it at once, typed and without polling the event
storage; and a run launched elsewhere (the UI, a run launcher) still has its log lines in Dagster."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class LoadProgress:
    """`units_done` of the `units_total` units of `element` to send are sent and recorded (the total grows
    when an element stored in several parts starts its next part)."""

    element: str
    units_done: int
    units_total: int
    at: float = field(default_factory=time.monotonic)


class ProgressListener(Protocol):
    def load_progress(self, progress: LoadProgress) -> None: ...


_listeners: list[ProgressListener] = []
_lock = threading.Lock()


@contextmanager
def listening(listener: ProgressListener) -> Iterator[None]:
    """`listener` hears of every load of this process while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def publish(progress: LoadProgress) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener.load_progress(progress)
