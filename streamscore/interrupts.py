"""SIGINT and SIGTERM in the CLI until Faust's loop handles them: always a stop, never lost.

`install` makes both raise KeyboardInterrupt, whatever the process inherited: a background job
of a non-interactive shell starts with SIGINT ignored, which Python keeps. The signal is also
recorded, because Python drops an exception raised where it runs a callback it cannot fail
(os.register_at_fork hooks, finalizers): `raise_if_pending` raises it again at the CLI's
checkpoints, and `forward_to_loop` re-sends it once Faust has installed its own handler.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import TYPE_CHECKING, Final, NoReturn

if TYPE_CHECKING:
    import asyncio  # imported by the commands that need it, after install()

SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
_POLL_S: Final = 0.02

_pending: int | None = None


def install() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt (and record them)."""
    for signum in SIGNALS:
        signal.signal(signum, _interrupt)


def raise_if_pending() -> None:
    """Raise the KeyboardInterrupt of a recorded signal whose first one was dropped."""
    if _pending is not None:
        raise KeyboardInterrupt(signal.Signals(_pending).name)


def pending() -> str | None:
    """The name of the signal recorded and not yet cleared (None: none)."""
    return None if _pending is None else signal.Signals(_pending).name


def clear() -> None:
    """Forget the recorded signal: the stop it asked for is done."""
    global _pending  # noqa: PLW0603 (one flag, set from a signal handler)
    _pending = None


def forward_to_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Until another handler replaces ours on `loop`, poll; then re-send a recorded signal to it."""

    def check() -> None:
        if signal.getsignal(signal.SIGINT) is _interrupt:
            loop.call_later(_POLL_S, check)
        elif _pending is not None:
            signum = _pending
            clear()
            os.kill(os.getpid(), signum)

    loop.call_soon(check)


def forget_unhandled_interrupt() -> None:
    """Keep a KeyboardInterrupt the CLI handled from making the process exit by SIGINT.

    When the interrupt unwinds through code that exec() runs from a string (namedtuple and
    dataclass methods, during an import), CPython sets _Py_UnhandledKeyboardInterrupt, handled
    or not, and re-raises SIGINT at exit while it is set: 1 stop in 30 at random moments of the
    start exited -2 instead of 0.
    """
    import ctypes

    try:
        flag = ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt")
    except ValueError:
        return  # another Python: nothing to reset
    flag.value = 0


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    global _pending  # noqa: PLW0603 (one flag, set from a signal handler)
    _pending = signum
    raise KeyboardInterrupt(signal.Signals(signum).name)
