"""The CLI's SIGINT and SIGTERM: a KeyboardInterrupt, raised again if Python dropped it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import pytest

from streamscore import interrupts


@pytest.fixture(autouse=True)
def _restore_handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    yield
    interrupts.clear()
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", interrupts.SIGNALS)
def test_both_signals_raise_keyboard_interrupt_even_when_inherited_ignored(
    signum: signal.Signals,
) -> None:
    signal.signal(signum, signal.SIG_IGN)
    interrupts.install()
    with pytest.raises(KeyboardInterrupt, match=signum.name):
        signal.raise_signal(signum)
    interrupts.clear()
    interrupts.raise_if_pending()  # nothing left once cleared


def test_an_interrupt_python_dropped_is_raised_at_the_next_checkpoint() -> None:
    interrupts.install()
    # What Python does with an exception raised in an at-fork hook or a finalizer.
    with contextlib.suppress(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        interrupts.raise_if_pending()


def test_a_dropped_signal_is_sent_again_once_another_handler_takes_over() -> None:
    interrupts.install()
    with contextlib.suppress(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    loop = asyncio.new_event_loop()
    try:
        received: list[int] = []
        done = loop.create_future()

        def faust_handler() -> None:
            received.append(signal.SIGINT)
            done.set_result(None)

        interrupts.forward_to_loop(loop)
        # As Faust does, a little after the loop has started.
        loop.call_later(0.1, loop.add_signal_handler, signal.SIGINT, faust_handler)
        loop.run_until_complete(asyncio.wait_for(done, 5))
        loop.run_until_complete(asyncio.sleep(0.1))  # no second delivery
        loop.remove_signal_handler(signal.SIGINT)
    finally:
        loop.close()
    assert received == [signal.SIGINT]
    interrupts.raise_if_pending()  # forwarded once, then forgotten


def test_nothing_is_sent_when_no_signal_came() -> None:
    interrupts.install()
    loop = asyncio.new_event_loop()
    try:
        received: list[int] = []
        interrupts.forward_to_loop(loop)
        loop.add_signal_handler(signal.SIGINT, lambda: received.append(signal.SIGINT))
        loop.run_until_complete(asyncio.sleep(0.2))
        loop.remove_signal_handler(signal.SIGINT)
    finally:
        loop.close()
    assert received == []
