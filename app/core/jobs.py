"""Fine-tuning as a background job: `python main.py train ... --json` in its own process (and
process group), never in the GUI process. Qt-free; the app binds a job's events to widgets.

- `TrainingJob.start(store, out, base=..., ...)` launches the trainer, reads its JSON events on a
  thread and hands each to `on_event` and to the `events` queue.
- `processes=N` launches it under torchrun, N processes (one per GPU; `strategy` ddp or fsdp).
- `cancel()` asks the trainer to finish its step and write a last checkpoint: a request file in
  the run folder, which the trainer's rank 0 reads each step whatever launched it (torchrun's
  workers, a run found again after a restart), and SIGTERM for a lone trainer process (which
  also stops one still setting up). After `timeout` seconds the process group gets SIGTERM,
  then SIGKILL.
- `find_runs(store_dir)` lists the store's fine-tune runs after the app was closed and reopened:
  a run whose trainer still lives (its pid alive and its command line that of `main.py train`
  with this run folder) is "running" and can be followed again with `TrainingJob.attach`, which
  tails the run folder's events.jsonl; the others carry their final status, and a run marked
  running whose process is gone is reported "died".
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from store import EpisodeStore
from xr0.train.rundir import EVENTS_FILE, RunDir, read_events

MAIN = Path(__file__).resolve().parents[2] / "main.py"
EventFn = Callable[[dict], None]


@dataclass
class RunRecord:
    """A fine-tune run found in a store."""

    run_id: int
    run_dir: Path | None
    status: str                 # running, done, failed, cancelled, died
    pid: int | None
    step: int | None            # the last step an event reported
    checkpoint: str | None
    config: dict = field(default_factory=dict)
    last_event: dict | None = None


def trainer_alive(pid: int | None, run_dir: Path) -> bool:
    """pid is alive and runs `main.py train` on this run folder."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ProcessLookupError, PermissionError, FileNotFoundError):
        return False
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if "train" not in args or not any(a.endswith("main.py") for a in args):
        return False
    try:
        i = args.index("--out")
        return Path(args[i + 1]).resolve() == run_dir.resolve()
    except (ValueError, IndexError):
        return False


def visible_gpus(driver: str | os.PathLike = "/proc/driver/nvidia/gpus") -> int:
    """The NVIDIA GPUs a trainer started from here can use: the driver's count, limited by
    CUDA_VISIBLE_DEVICES when it is set (up to its first invalid entry, as CUDA reads it).
    Counted without importing torch into the app's process."""
    try:
        n = len(os.listdir(driver))
    except OSError:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        valid = 0
        for entry in visible.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            valid += 1
        n = min(n, valid)
    return n


def find_runs(store_dir: str | os.PathLike) -> list[RunRecord]:
    """The store's fine-tune runs, oldest first, with the state of their trainer process."""
    with EpisodeStore.open(store_dir) as st:
        rows = st.runs(kind="finetune")
    out = []
    for row in rows:
        run_dir = Path(row["paths"]["run_dir"]) if row["paths"].get("run_dir") else None
        pid, events = None, []
        if run_dir is not None and RunDir(run_dir).exists():
            try:
                pid = RunDir(run_dir).read().get("pid")
            except ValueError:
                pid = None
            events = read_events(run_dir)
        status = row["status"]
        if status == "running" and not (run_dir and trainer_alive(pid, run_dir)):
            status = "died"
        steps = [e["step"] for e in events if isinstance(e.get("step"), int)]
        out.append(RunRecord(run_id=row["id"], run_dir=run_dir, status=status, pid=pid,
                             step=steps[-1] if steps else None,
                             checkpoint=row["paths"].get("checkpoint"), config=row["config"],
                             last_event=events[-1] if events else None))
    return out


class TrainingJob:
    """A trainer process and the stream of its events."""

    def __init__(self, pid: int, run_dir: Path, on_event: EventFn | None,
                 process: subprocess.Popen | None = None, processes: int = 1):
        self.pid, self.run_dir, self.process = pid, Path(run_dir), process
        self.processes = processes      # trainer processes (torchrun's workers when > 1)
        self.on_event = on_event
        self.events: queue.Queue[dict] = queue.Queue()
        self.stderr_tail: list[str] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- starting and attaching --------------------------------------------------------------------

    @classmethod
    def start(cls, store: str | os.PathLike, out: str | os.PathLike, *, base: str,
              preset: str = "full", episodes: str = "all", steps: int | None = None,
              batch: int | None = None, val_episodes: int | None = None, resume: bool = False,
              extra_args: Sequence[str] = (), on_event: EventFn | None = None,
              python: str = sys.executable, env: dict | None = None, processes: int = 1,
              strategy: str | None = None) -> TrainingJob:
        out = Path(out).resolve()
        if processes < 1:
            raise ValueError(f"a training job needs at least one process, got {processes}")
        launcher = [python] if processes == 1 else [
            python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(processes)]
        cmd = [*launcher, str(MAIN), "train", "--store", str(Path(store).resolve()), "--out",
               str(out), "--base", str(base), "--preset", preset, "--episodes", str(episodes),
               "--json"]
        if strategy is not None:
            cmd += ["--strategy", strategy]
        for flag, value in (("--steps", steps), ("--batch", batch), ("--val-episodes", val_episodes)):
            if value is not None:
                cmd += [flag, str(value)]
        if resume:
            cmd.append("--resume")
        cmd += list(extra_args)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                bufsize=1, start_new_session=True, cwd=str(MAIN.parent),
                                env={**os.environ, **(env or {})})
        job = cls(proc.pid, out, on_event, proc, processes)
        job._spawn(job._read_stdout)
        job._spawn(job._read_stderr)
        return job

    @classmethod
    def attach(cls, run: RunRecord, on_event: EventFn | None = None) -> TrainingJob:
        """Follow a run found by find_runs: every event of its log so far, then new ones while
        its trainer lives."""
        if run.run_dir is None or run.pid is None:
            raise ValueError(f"run {run.run_id} has no run folder or process to follow")
        try:
            processes = int(RunDir(run.run_dir).read().get("world_size", 1))
        except (FileNotFoundError, ValueError):
            processes = 1
        job = cls(run.pid, run.run_dir, on_event, processes=processes)
        job._spawn(job._tail_log)
        return job

    def _spawn(self, target) -> None:
        t = threading.Thread(target=target, daemon=True)
        t.start()
        self._threads.append(t)

    def _deliver(self, ev: dict) -> None:
        self.events.put(ev)
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # noqa: BLE001 - a failing listener must not stop the stream
                self.on_event = None

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self._deliver(json.loads(line))
            except json.JSONDecodeError:
                self._deliver({"event": "output", "line": line})

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-50:]

    def _tail_log(self) -> None:
        path, pos, buf = self.run_dir / EVENTS_FILE, 0, ""
        while not self._stop.is_set():
            alive = self.alive()
            if path.is_file():
                with open(path) as f:
                    f.seek(pos)
                    buf += f.read()
                    pos = f.tell()
                *lines, buf = buf.split("\n")
                for line in lines:
                    if line.strip():
                        try:
                            self._deliver(json.loads(line))
                        except json.JSONDecodeError:
                            pass
            if not alive:
                return
            time.sleep(0.2)

    # -- control -----------------------------------------------------------------------------------

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return trainer_alive(self.pid, self.run_dir)

    def cancel(self, timeout: float = 60.0) -> int | None:
        """Ask the trainer to stop after its step (the run folder's request file; SIGTERM too
        for a lone trainer process); after `timeout` s SIGTERM to its process group, SIGKILL 10 s
        later. The exit status if known."""
        RunDir(self.run_dir).request_cancel()
        if self.processes == 1:
            self._signal(signal.SIGTERM)
        if self.wait(timeout) is None and self.alive():
            if self.processes > 1:
                self._signal(signal.SIGTERM)
                if self.wait(10.0) is not None or not self.alive():
                    return self.returncode
            self._signal(signal.SIGKILL)
            return self.wait(10.0)
        return self.returncode

    def _signal(self, sig: int) -> None:
        """To the trainer's process group: the one it leads when this job started it, or
        torchrun's when it is a worker found again after a restart; never the app's own."""
        try:
            group = os.getpgid(self.pid)
            if group != os.getpgid(0):
                os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status once the trainer has exited, None if still running at the timeout."""
        if self.process is not None:
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
            for t in self._threads:
                t.join(5.0)
            return code
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.alive():
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.1)
        for t in self._threads:
            t.join(5.0)
        return None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None
