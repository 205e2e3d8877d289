"""Exceptions shared by the data layer (kept apart so that every module can import them without cycles)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["BadSequenceError", "Interrupted", "raise_on_sigterm", "signals_deferred"]


class BadSequenceError(ValueError):
    """One sequence (a file, or an archive member) cannot be used.

    Attributes:
        origin: where the sequence came from, e.g. ``"075/nm-01/000/000.pkl"`` for a folder or
            ``"075.tar.xz:075/nm-01/000/000.pkl"`` for an archive member.
        reason: what is wrong with it, in words (e.g. ``"dtype float64, expected uint8"``).

    The message is ``"<origin>: <reason>"``.
    """

    def __init__(self, origin: str, reason: str) -> None:
        self.origin = str(origin)
        self.reason = str(reason)
        super().__init__(f"{self.origin}: {self.reason}")

    def __reduce__(self):  # keep the two-argument constructor picklable (e.g. across processes)
        return (type(self), (self.origin, self.reason))


class Interrupted(KeyboardInterrupt):
    """A SIGTERM (or SIGINT) that stops a long job: raised in the main thread so that ``with`` blocks clean up
    (an import removes its partial store) as they do on Ctrl-C. ``signum`` is the signal; ``qgait.cli.main``
    exits with ``128 + signum``."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


@contextlib.contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` (Python's default ends the process at once, without
    running cleanup). Only in the main thread (elsewhere, and under a handler someone else installed, nothing
    changes); the previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (blocked, then delivered): for a few steps that must not be
    cut in two, such as the renames that put a finished store in place. POSIX only; elsewhere a no-op."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
