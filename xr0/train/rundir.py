"""The folder of one fine-tuning run (RUN_DIR):

    run.json                 what the run is: config, store, episodes, run id in the store's
                             runs table, pid and start time of the process training it
    events.jsonl             every event the trainer emitted, one JSON object per line
    checkpoints/step-NNNNNNN a checkpoint (xr0.model.save_checkpoint) plus training_state.pt
                             (optimizer, scheduler, step, RNG states) for --resume
    last.json                {"step", "path"} of the newest complete checkpoint
    cancel.request           written to ask the run to stop: the trainer (its rank 0 reads it
                             each step, so any launcher works, torchrun included) finishes its
                             step, writes a last checkpoint, ends "cancelled" and removes it;
                             a request older than the trainer's start is ignored

A checkpoint is written into checkpoints/.tmp-step-N, every file fsync'd, then renamed into
place, and only then does last.json (written to a temporary file, fsync'd, renamed) point at it:
a run killed at any moment leaves last.json naming a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from store.columns import fsync_dir

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
LAST_FILE = "last.json"
CANCEL_FILE = "cancel.request"
CHECKPOINTS = "checkpoints"
TRAINING_STATE = "training_state.pt"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_events(run_dir: str | os.PathLike) -> list[dict]:
    """The events of a run, skipping a torn last line."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    def exists(self) -> bool:
        return self.run_file.is_file()

    def read(self) -> dict:
        try:
            return json.loads(self.run_file.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path} holds no run ({RUN_FILE} is missing): start a new "
                                    "run there without --resume") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.run_file} is damaged ({e}): start a new run in another "
                             "--out folder") from e

    def write(self, info: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_file, info)

    # -- cancel requests -------------------------------------------------------------------------

    def request_cancel(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CANCEL_FILE).write_text(f"{time.time()}\n")

    def cancel_requested(self, since: float = 0.0) -> bool:
        """A request made at or after `since` (a time.time()); older ones were for an earlier
        attempt of the run."""
        try:
            return (self.path / CANCEL_FILE).stat().st_mtime >= since
        except FileNotFoundError:
            return False

    def clear_cancel(self) -> None:
        (self.path / CANCEL_FILE).unlink(missing_ok=True)

    # -- events ----------------------------------------------------------------------------------

    def emitter(self, on_event: Callable[[dict], None] | None) -> Callable[[dict], None]:
        """A function that stamps an event, appends it to events.jsonl and passes it on."""
        self.path.mkdir(parents=True, exist_ok=True)
        log = open(self.path / EVENTS_FILE, "a", buffering=1)

        def emit(event: dict) -> None:
            event = {"event": event.pop("event"), "time": time.time(), **event}
            log.write(json.dumps(event, default=str) + "\n")
            log.flush()
            if on_event is not None:
                on_event(event)

        emit.close = log.close  # type: ignore[attr-defined]
        return emit

    # -- checkpoints ----------------------------------------------------------------------------

    def last_checkpoint(self) -> Path | None:
        path = self.path / LAST_FILE
        if not path.is_file():
            return None
        try:
            ck = self.path / json.loads(path.read_text())["path"]
        except (json.JSONDecodeError, KeyError):
            return None
        return ck if (ck / TRAINING_STATE).is_file() else None

    def checkpoints(self) -> list[Path]:
        root = self.path / CHECKPOINTS
        return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int) -> Path:
        """write(tmp_dir) fills a fresh folder; it becomes checkpoints/step-N atomically and
        last.json points at it. Older checkpoints beyond `keep` are removed."""
        root = self.path / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step:07d}"
        tmp = root / f".tmp-step-{step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(root)
        write_json_atomic(self.path / LAST_FILE, {"step": step,
                                                  "path": str(final.relative_to(self.path))})
        for old in self.checkpoints()[:-keep] if keep > 0 else []:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final
