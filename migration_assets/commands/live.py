"""What `make demo` shows while it runs: per data element a progress bar of the units sent, with the
entries answered per second and the time left, the retries and quota waits as they happen, then the
element's line of the summary. When the output is not a terminal (CI, a log file) the same news comes
as plain lines: a few per element, never a redrawn bar.

It listens in process: to the load's progress (pipeline/progress.py), to every Medplum client's
statistics (medplum/client.py `observed_by`) and to the platform's own log records (the client's
"retry in 2.0s", "waiting 30s for the quota's reset"), which it prints instead of Python's default
handler."""

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from migration_assets.medplum.client import observed_by
from migration_assets.medplum.responses import EntryResponse
from migration_assets.pipeline.progress import LoadProgress, listening

PLATFORM_LOGGER = "migration_assets"
# Plain output: a line at each quarter of a load.
PLAIN_STEPS = 4
REDRAW_SECONDS = 0.2


@dataclass
class _Element:
    name: str
    task: TaskID | None = None
    load_started: float | None = None
    entries: int = 0
    retries: int = 0
    rate_limited: int = 0
    reported_start: bool = False
    reported_quarter: int = 0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.load_started if self.load_started else 0.0
        return self.entries / elapsed if elapsed > 0 else 0.0


class LiveView:
    """Used as `with LiveView(console) as view:` around the runs; `view.element(name)` around each."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live = self.console.is_terminal
        self._lock = threading.Lock()
        self._current: _Element | None = None
        self._drawn = 0.0
        self._stack = ExitStack()
        self._progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("units"),
            TextColumn("{task.fields[rate]:>12}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[trouble]}"),
            # Not redirected: Dagster swaps sys.stdout and sys.stderr around each step, which would cut the
            # display off from the terminal.
            console=self.console,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> Self:
        if self.live:
            self._stack.enter_context(self._progress)
        self._stack.enter_context(listening(self))
        self._stack.enter_context(observed_by(self))
        self._stack.enter_context(_platform_log_to(self._event))
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()

    @contextmanager
    def element(self, name: str) -> Iterator[None]:
        """News of the loads in this block are `name`'s."""
        state = _Element(name)
        if self.live:
            state.task = self._progress.add_task(name, total=None, rate="preparing", trouble="")
        with self._lock:
            self._current = state
        try:
            yield
        finally:
            with self._lock:
                self._current = None
            if state.task is not None:
                self._progress.remove_task(state.task)
                self._progress.refresh()

    def print(self, line: str) -> None:
        """A line above the bars (or a plain line)."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    # -- what the listeners hear, from the run's threads ------------------------------------------

    def load_progress(self, progress: LoadProgress) -> None:
        state = self._current
        if state is None or state.name != progress.element:
            return
        if not state.reported_start:
            state.reported_start = True
            state.load_started = state.load_started or progress.at
            if not self.live:
                self.print(f"{state.name}: sending {progress.units_total:,} units")
        if state.task is not None:
            self._progress.update(
                state.task,
                completed=progress.units_done,
                total=progress.units_total,
                rate=f"{state.rate():,.0f} entries/s",
                trouble=self._trouble(state),
            )
            if progress.units_done == progress.units_total:
                self._progress.update(state.task, rate="checking")
            # Drawn from here: the busy load leaves the display's own refresh thread little time.
            if time.monotonic() - self._drawn >= REDRAW_SECONDS or progress.units_done == progress.units_total:
                self._drawn = time.monotonic()
                self._progress.refresh()
            return
        quarter = progress.units_done * PLAIN_STEPS // max(1, progress.units_total)
        if quarter > state.reported_quarter:
            state.reported_quarter = quarter
            self.print(
                f"{state.name}: {progress.units_done:,} of {progress.units_total:,} units sent, "
                f"{state.rate():,.0f} entries/s"
            )

    def answered(self, entries: Sequence[EntryResponse]) -> None:
        state = self._current
        if state is not None:
            # The load's clock starts with its first answer (progress comes once outcomes are stored).
            state.load_started = state.load_started or time.monotonic()
            state.entries += len(entries)

    def counted(self, increments: Mapping[str, int]) -> None:
        state = self._current
        if state is None:
            return
        state.retries += increments.get("retries", 0)
        state.rate_limited += increments.get("rate_limited", 0)
        if state.task is not None and (increments.get("retries") or increments.get("rate_limited")):
            self._progress.update(state.task, trouble=self._trouble(state))

    @staticmethod
    def _trouble(state: _Element) -> str:
        parts = ([f"{state.retries} retries"] if state.retries else []) + (
            [f"{state.rate_limited} × 429"] if state.rate_limited else []
        )
        return ", ".join(parts)

    def _event(self, message: str) -> None:
        state = self._current
        self.print(f"{state.name if state else 'medplum'}: {message}")


class _ToView(logging.Handler):
    def __init__(self, show: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.show = show

    def emit(self, record: logging.LogRecord) -> None:
        self.show(record.getMessage())


@contextmanager
def _platform_log_to(show: Callable[[str], None]) -> Iterator[None]:
    """The platform's own log records (retries, quota waits, lost writes sent again) go to `show`
    instead of Python's last-resort handler on stderr."""
    logger = logging.getLogger(PLATFORM_LOGGER)
    handler = _ToView(show)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
