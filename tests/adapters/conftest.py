"""What a notebook cell shows while a framework trains, and the logging and warnings state around it."""

import io
import logging
import sys
import warnings

import pytest

from lmwidget.adapters import chatter
from lmwidget.adapters.chatter import framework_handlers


class _CurrentStderr(io.TextIOBase):
    """A stream that writes to whatever sys.stderr is now (the test's captured one)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


def _console(handler) -> bool:
    stream = getattr(handler, "stream", None)
    return (type(handler) is logging.StreamHandler  # a framework's own, not pytest's capture
            and (stream in (sys.__stderr__, sys.__stdout__) or getattr(stream, "name", "") in ("<stderr>", "<stdout>")))


@pytest.fixture
def cell(capsys, caplog):
    """A function returning what a cell would have shown since the last call: stdout,
    stderr (where the frameworks' own handlers write, made to write to the captured one) and
    the log records that reached the root logger (where a kernel's last resort prints them)."""
    moved = [(h, h.setStream(_CurrentStderr())) for h in framework_handlers() if _console(h)]

    def shown() -> str:
        out, err = capsys.readouterr()
        text = out + err + "".join(f"{r.name}: {r.getMessage()}\n" for r in caplog.records)
        caplog.clear()
        return text

    yield shown
    for handler, stream in moved:
        handler.setStream(stream)


class LoggingState:
    """Every logger's level, propagation, handlers and filters, every handler's filters, and
    the warnings filters and hook, as they are when made."""

    def __init__(self):
        loggers = {"": logging.root, **{n: lg for n, lg in logging.root.manager.loggerDict.items()
                                        if isinstance(lg, logging.Logger)}}
        handlers = {h for lg in loggers.values() for h in lg.handlers} | {logging.lastResort}
        self.loggers = {n: (lg.level, lg.propagate, lg.disabled, list(lg.handlers), list(lg.filters))
                        for n, lg in loggers.items()}
        self.handlers = {id(h): (h, list(h.filters)) for h in handlers if h is not None}
        self.warnings = (list(warnings.filters), warnings.showwarning)

    def assert_unchanged(self) -> None:
        """Fail unless everything is as it was (loggers made since, by imports, aside)."""
        now = LoggingState()
        assert {n: now.loggers[n] for n in self.loggers} == self.loggers
        assert {k: now.handlers.get(k) for k in self.handlers} == self.handlers
        (filters, hook), (was, was_hook) = now.warnings, self.warnings
        assert hook is was_hook
        # a framework may add filters of its own as it imports a module (accelerate does): the
        # ones that were there stay, in order, and none of lmwidget's is left
        assert [f for f in filters if f in was] == was
        assert not [f for f in filters if f not in was and f in chatter._IGNORED]


@pytest.fixture
def logging_state():
    """Make a LoggingState: the logging and warnings state now; its assert_unchanged() checks it."""
    return LoggingState
