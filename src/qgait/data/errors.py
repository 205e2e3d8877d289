"""Exceptions shared by the data layer (kept apart so that every module can import them without cycles)."""

from __future__ import annotations

__all__ = ["BadSequenceError"]


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
