"""A bounded pool of open video readers, one per (episode, camera), for random access in training.

Opening a reader indexes the file's packets once, so readers stay open between samples; the pool
keeps the most recently used `max_open` of them and closes the least recently used beyond that,
bounding open files and decoded-frame caches (each reader caches up to `cache_frames` full-size
frames: 16 frames of 480x640 are 15 MB).

Process safety: nothing is opened at construction and the pool pickles empty, so a dataset can be
sent to DataLoader workers by fork, spawn or forkserver; a pool that finds itself in another
process than the one that opened its readers (a fork after use) sets them aside untouched, never
closing or freeing them there (the parent still owns those decoders, and tearing down a forked
copy of FFmpeg state can hang), and opens its own.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Hashable

from store.video import VideoReader

# readers inherited through fork: kept referenced so the child never runs their teardown
_INHERITED: list = []


class ReaderPool:
    def __init__(self, max_open: int = 8, cache_frames: int = 16):
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.max_open = max_open
        self.cache_frames = cache_frames
        self._readers: OrderedDict[Hashable, VideoReader] = OrderedDict()
        self._pid = os.getpid()
        self.opened = 0    # readers opened by this process (a measure of churn)

    def get(self, key: Hashable, path: str) -> VideoReader:
        if self._pid != os.getpid():
            _INHERITED.append(self._readers)   # inherited by fork: the parent's, not ours
            self._readers = OrderedDict()
            self._pid = os.getpid()
            self.opened = 0
        r = self._readers.get(key)
        if r is not None:
            self._readers.move_to_end(key)
            return r
        r = VideoReader(path, cache_frames=self.cache_frames)
        self._readers[key] = r
        self.opened += 1
        while len(self._readers) > self.max_open:
            _, old = self._readers.popitem(last=False)
            old.close()
        return r

    def __len__(self) -> int:
        return len(self._readers)

    def close(self) -> None:
        if self._pid == os.getpid():
            for r in self._readers.values():
                r.close()
        self._readers = OrderedDict()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "cache_frames": self.cache_frames}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
