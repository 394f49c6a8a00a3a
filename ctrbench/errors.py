"""Errors a user can cause. The CLI turns them into one clean message and exit status 1."""

from __future__ import annotations


class CtrbenchError(Exception):
    """A user-facing error: bad name, bad card, bad file, failed download.

    ``hint`` is an optional second line telling the user what to do next.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class UnknownNameError(CtrbenchError):
    """A model, dataset, group or architecture name that is not registered."""


class CardError(CtrbenchError):
    """A card (TOML) that is missing, malformed or has unknown keys."""


class DataError(CtrbenchError):
    """Raw data that is missing, corrupt, or fails a checksum."""


class ChecksumError(DataError):
    """A downloaded or mirrored file whose hash differs from the card's."""


class IncomparableError(CtrbenchError):
    """Results that may not be compared (different dataset or protocol versions)."""
