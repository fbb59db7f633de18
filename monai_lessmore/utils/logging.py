"""What the command line and the bundles print: library notices routed away, log lines that leave progress bars
intact, and the cause of a failed config expression as the last line.

:func:`configure_console` is the one entry point. ``lessmore`` calls it at start-up and every bundle calls it from
its ``initialize`` expression (MONAI runs ``initialize`` before the workflow's run expression)::

    "initialize": ["$monai_lessmore.utils.logging.configure_console()"]

It does three things, each also available alone:

* :func:`quiet_library_notices` -- notices that concern neither the user's data nor their result are lowered below
  the console level: MONAI's "nvImageCodec is not available" (printed whenever a ``LoadImage`` is built on a machine
  without NVIDIA's codec; pydicom's own decoders are then used), MONAI's warning that a config is evaluated with
  ``eval()`` (repeated for every config a run parses in-process; our bundles are the configs being run), and
  ignite's per-engine bookkeeping at INFO ("Engine run resuming from iteration 0, epoch 0", "Epoch[1] Complete.
  Time taken", MONAI's "Got new best metric", emitted by every trainer *and* every validation run), dropped by a
  filter on the console handlers of the root logger. Warnings and errors of those libraries still show, and so do
  the lines of a ``StatsHandler`` that logs through the engine's logger.
* :func:`bar_safe_console` -- console log handlers write through ``tqdm.write``, which clears the progress bars,
  writes the line and redraws them, so a log line never lands in the middle of a bar (bars are on stderr, the
  bundles log to stdout; both usually end on one terminal).
* :func:`show_config_errors_last` -- MONAI wraps every exception raised while a config item is built in
  ``RuntimeError: Failed to evaluate ConfigExpression ...`` / ``Failed to instantiate component ...``, so the last
  line of the traceback is MONAI's wrapper and the clear message (a missing weights file, a batch larger than the
  data) sits above it. An exception hook prints the traceback as before, then the first exception under the
  wrappers once more, as the last line.

MONAI's own ``eval()`` notice for the config file named on the ``python -m monai.bundle run`` command line is
printed before any of the bundle's code runs; ``lessmore`` passes :data:`QUIET_WARNINGS_ENV` to the bundle runs it
starts, and a user can do the same (``PYTHONWARNINGS="ignore:parsing config_file"``).
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from types import TracebackType
from typing import IO, Any

__all__ = [
    "QUIET_WARNINGS_ENV",
    "bar_safe_console",
    "configure_console",
    "config_error_cause",
    "quiet_library_notices",
    "show_config_errors_last",
]

# warnings (message start, category) that are not for the user of our bundles and commands
_QUIET_WARNINGS = (
    ("parsing config_file ", UserWarning),  # monai.bundle: configs are eval()-ed (we run our own configs)
    ("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register", UserWarning),
)
# loggers whose records below a level are not for the user
_QUIET_LOGGERS = {
    "monai.data.nvimgcodec_pydicom_plugin": logging.ERROR,  # "nvImageCodec is not available; skipping ..."
}
# INFO records of ignite engines' loggers ("ignite.engine.engine.<class>") that are bookkeeping
_ENGINE_BOOKKEEPING = re.compile(
    r"^(Engine run (starting|resuming|finished)\b|Epoch\[\d+\] Complete\. Time taken|Got new best metric of )"
)

#: environment for a child ``python -m monai.bundle run``: MONAI's ``eval()`` notice is printed before any of our
#: code runs there, so only a warnings filter given at interpreter start reaches it.
QUIET_WARNINGS_ENV = {"PYTHONWARNINGS": "ignore:parsing config_file"}

_CONFIG_WRAPPERS = ("Failed to evaluate ", "Failed to instantiate component ")


class _EngineBookkeepingFilter(logging.Filter):
    """Drop ignite's per-engine INFO bookkeeping (run started/resumed/finished, epoch time, new best metric)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("ignite.engine.engine") and record.levelno < logging.WARNING
                    and _ENGINE_BOOKKEEPING.match(str(record.msg)) is not None)


def quiet_library_notices(logger: logging.Logger | None = None) -> None:
    """Keep MONAI's and ignite's routine notices off the console (see the module docstring); idempotent.

    Args:
        logger: the logger whose handlers get the ignite filter (default: the root logger, where the bundles'
            ``logging.conf`` and ``logging.basicConfig`` put the console handler).
    """
    for message, category in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, level in _QUIET_LOGGERS.items():
        quiet = logging.getLogger(name)
        if quiet.level < level:
            quiet.setLevel(level)
    for handler in (logging.getLogger() if logger is None else logger).handlers:
        if not any(isinstance(f, _EngineBookkeepingFilter) for f in handler.filters):
            handler.addFilter(_EngineBookkeepingFilter())


class _BarSafeStream:
    """A text stream that writes through ``tqdm.write`` (clear the bars, write, redraw them)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        from tqdm import tqdm

        tqdm.write(text, file=self.stream, end="")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno ... of the real stream
        return getattr(self.stream, name)


def bar_safe_console(logger: logging.Logger | None = None) -> None:
    """Make the console handlers of ``logger`` (default: the root logger) write through ``tqdm.write``; idempotent.

    Args:
        logger: the logger whose ``StreamHandler`` s writing to stdout/stderr are changed.
    """
    logger = logging.getLogger() if logger is None else logger
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr):
            handler.setStream(_BarSafeStream(handler.stream))  # type: ignore[arg-type]


def config_error_cause(exc: BaseException) -> BaseException:
    """The first exception under MONAI's config wrappers (``Failed to evaluate`` / ``Failed to instantiate``).

    Args:
        exc: the exception that reached the top.

    Returns:
        ``exc`` itself when it is not such a wrapper, else the innermost wrapper's cause.
    """
    seen = set()
    while (isinstance(exc, RuntimeError) and str(exc).startswith(_CONFIG_WRAPPERS) and exc.__cause__ is not None
           and id(exc) not in seen):
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def _config_error_hook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, *, _previous: Any = None
) -> None:
    (_previous or sys.__excepthook__)(exc_type, exc, tb)
    cause = config_error_cause(exc)
    if cause is not exc:
        sys.stderr.write(f"\n{type(cause).__name__}: {cause}\n")
        sys.stderr.flush()


def show_config_errors_last() -> None:
    """Install the exception hook that repeats the cause of a failed config item as the last line; idempotent."""
    if getattr(sys.excepthook, "_lessmore_config_errors", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        _config_error_hook(exc_type, exc, tb, _previous=previous)

    hook._lessmore_config_errors = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def configure_console() -> None:
    """:func:`quiet_library_notices`, :func:`bar_safe_console` and :func:`show_config_errors_last`; idempotent."""
    quiet_library_notices()
    bar_safe_console()
    show_config_errors_last()
