"""A checkpoint run in a policy server process of its own, on 127.0.0.1, for this app alone.

In the app's process the model's forward pass (thousands of small torch ops) competes for the GIL
with the GUI thread, the rig's control thread and the sim's physics thread, and its intra-op
threads with them for the cores: a chunk that takes ~45 ms alone took seconds there. In a process
of its own it has its own GIL and a fixed number of torch threads; the app reaches it through
RemotePolicy, and the runtime counts the transport time in its delay estimate.

    LocalPolicyServer(checkpoint).start()   `main.py serve --port 0 --json --exit-with-parent`,
                                            a random token in its environment; waits for the
                                            'serving' line (the port it picked)
    .connect(joint_names=...) -> LocalPolicy  a RemotePolicy; shutdown() stops the server too
    .close()                                SIGTERM, then SIGKILL; idempotent

The server dies with the app: it watches its stdin (a pipe only this process holds) and its
parent pid, so a crashed app leaves no orphan. It runs in a session of its own, so Ctrl-C in the
app's terminal reaches the app, which stops it in order. Qt-free.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from xr0.serve import RemotePolicy

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "main.py"
HOST = "127.0.0.1"


def default_threads() -> int:
    """Torch threads for a local server: 1 on a machine of 2-3 cores (the GUI, control and
    physics threads need the others), else 2."""
    return 2 if (os.cpu_count() or 1) >= 4 else 1


class LocalServerError(RuntimeError):
    """The local policy server did not come up; the message carries its own error output."""


class LocalPolicy(RemotePolicy):
    """A RemotePolicy to a LocalPolicyServer it owns. close() only drops the connection (as for
    any RemotePolicy: the next call reconnects); shutdown() also stops the server."""

    def __init__(self, server: LocalPolicyServer, **kwargs):
        self.server = server
        super().__init__(server.host, server.port, token=server.token, **kwargs)

    def shutdown(self) -> None:
        self.close()
        self.server.close()


class LocalPolicyServer:
    """`main.py serve` for one checkpoint folder in a child process on 127.0.0.1.

    threads: torch threads of the server (default_threads()). ready_timeout_s: how long loading
    the checkpoint may take before start() gives up."""

    def __init__(self, checkpoint: str | Path, instruction: str = "", threads: int | None = None,
                 ready_timeout_s: float = 120.0, device: str = "cpu"):
        self.checkpoint = Path(checkpoint)
        self.instruction = instruction
        self.threads = int(threads or default_threads())
        self.ready_timeout_s = float(ready_timeout_s)
        self.device = device
        self.token = secrets.token_urlsafe(24)
        self.host, self.port = HOST, 0
        self.meta: dict = {}
        self.proc: subprocess.Popen | None = None
        self._stdout: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._ready = threading.Event()
        self._readers: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, lines: int = 15) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> LocalPolicyServer:
        """Start the server and wait until it serves (LocalServerError if it exits or does not
        come up within ready_timeout_s; the server is stopped then)."""
        if not self.checkpoint.is_dir():
            raise ValueError(f"{self.checkpoint}: no such checkpoint folder; give a checkpoint "
                             f"folder (from `main.py train`)")
        cmd = [sys.executable, str(MAIN), "serve", "--policy", str(self.checkpoint.absolute()),
               "--host", HOST, "--port", "0", "--device", self.device,
               "--threads", str(self.threads), "--instruction", self.instruction,
               "--exit-with-parent", "--json"]
        threads = str(self.threads)
        env = {**os.environ, "XR0_SERVE_TOKEN": self.token,  # not in argv, which `ps` shows
               "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=ROOT, env=env,
                                     start_new_session=True)
        self._readers = [
            threading.Thread(target=self._read_stdout, name="policy-server-out", daemon=True),
            threading.Thread(target=self._read_stderr, name="policy-server-err", daemon=True)]
        for t in self._readers:
            t.start()
        end = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                for t in self._readers:
                    t.join(timeout=2.0)  # the last lines of its error output
                code = self.proc.returncode
                self.close()
                raise LocalServerError(
                    f"the policy server for {self.checkpoint} exited (code {code}) before "
                    f"serving:\n{self.stderr_tail() or '(no error output)'}\n\nCheck that the "
                    f"folder is a checkpoint `main.py train` wrote (RUN/checkpoints/step-N, or the "
                    f"run folder) and that "
                    f"`python main.py serve --policy {self.checkpoint}` starts")
            if time.monotonic() > end:
                self.close()
                raise LocalServerError(
                    f"the policy server for {self.checkpoint} did not serve within "
                    f"{self.ready_timeout_s:.0f} s (loading the checkpoint is too slow on this "
                    f"machine, or it hangs); its last output:\n"
                    f"{self.stderr_tail() or '(none)'}\n\nClose other programs using the CPU "
                    f"and start again")
        return self

    def connect(self, joint_names: Sequence[str] | None = None,
                cameras: Sequence[str] | None = None, **kwargs) -> LocalPolicy:
        """A LocalPolicy on this server (kwargs go to RemotePolicy: timeout_s, seed, ...). A
        policy that does not fit the rig (LayoutMismatch) stops the server before it raises."""
        if not self._ready.is_set():
            self.start()
        try:
            return LocalPolicy(self, joint_names=joint_names, cameras=cameras, **kwargs)
        except Exception:
            self.close()
            raise

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop the server: close its stdin, SIGTERM, then SIGKILL after timeout_s. Idempotent."""
        with self._lock:
            proc = self.proc
            if proc is None:
                return
            if proc.poll() is None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5.0)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass

    def __enter__(self) -> LocalPolicyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the server's output (reader threads; the pipes must be drained or the server blocks) ----
    def _read_stdout(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self._stdout.append(line)
            if self._ready.is_set():
                continue  # per-request log lines: kept as a tail, not parsed
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "serving":  # its errors come on stderr too
                self.port = int(ev["port"])
                self.meta = ev
                self._ready.set()

    def _read_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            self._stderr.append(raw.decode(errors="replace").rstrip())


def serve_checkpoint(checkpoint: str | Path, instruction: str = "",
                     joint_names: Sequence[str] | None = None, threads: int | None = None,
                     **kwargs) -> LocalPolicy:
    """A checkpoint folder served by a LocalPolicyServer, as a LocalPolicy (shutdown() stops
    the server)."""
    server = LocalPolicyServer(checkpoint, instruction, threads=threads)
    return server.start().connect(joint_names=joint_names, **kwargs)


def discard_policy(policy) -> None:
    """Drop a policy that will not run: a LocalPolicy's server process is stopped on a thread of
    its own (SIGTERM, then SIGKILL), so the caller (a GUI thread) never waits; others are left."""
    shutdown = getattr(policy, "shutdown", None)
    if shutdown is not None:
        threading.Thread(target=shutdown, name="policy-shutdown", daemon=True).start()
