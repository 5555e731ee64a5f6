"""Errors of the episode store. Each message says what went wrong and what to do about it."""

from __future__ import annotations


class StoreError(Exception):
    """Base of everything the store raises on purpose."""


class StoreNotWritable(StoreError):
    pass


class SchemaTooNew(StoreError):
    pass


class CorruptIndex(StoreError):
    pass


class StoreWriteError(StoreError):
    """Writing an episode failed (disk full, I/O error); the recording stopped."""


class EmptyEpisode(StoreError):
    pass


class EpisodeUnreadable(StoreError):
    pass


class EpisodeNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
