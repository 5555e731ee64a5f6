"""The episode store: demonstrations and runs on disk. One SQLite index (sqlite-utils, WAL) plus
per-episode step arrays and streaming-encoded camera videos.

Its own package because both sides read it: the recorder (app) writes episodes, the dataset view
for training (xr0) reads them. It imports no Qt, no drivers and no xr0.
"""

from store.db import EpisodeStore
from store.episode import EpisodeData, EpisodeInfo, EpisodeWriter
from store.errors import (
    CorruptIndex, EmptyEpisode, EpisodeNotFound, EpisodeUnreadable, SchemaTooNew, StoreError,
    StoreNotWritable, StoreWriteError,
)

__all__ = [
    "EpisodeStore", "EpisodeWriter", "EpisodeInfo", "EpisodeData", "StoreError",
    "StoreNotWritable", "SchemaTooNew", "CorruptIndex", "StoreWriteError", "EmptyEpisode",
    "EpisodeUnreadable", "EpisodeNotFound",
]
