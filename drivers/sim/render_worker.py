"""The sim cameras' render worker: a separate process that renders the scene offscreen.

mujoco's Renderer holds the Python GIL through parts of every frame (a 240x320 frame costs about
6-9 ms of CPU on software GL; a thread beside a rendering one waits up to a few ms for the GIL).
Rendered in the rig's own process, frames would stall the physics thread, the control loop and the
GUI, and three cameras at 25 fps take about half a core from them. So the real-time SimRig renders
in a worker process started with `python -m drivers.sim.render_worker`: it builds the same model
(drivers.sim.scene.build_model for the rig's task and offscreen size) and owns the GL contexts.

Protocol (one request in flight at a time, so no slot is ever written while it is read):

- one shared-memory block (multiprocessing.shared_memory, created by the parent) holds
  the state slot   header <Q seq, d t_sim> then qpos (nq f64), mocap_pos (nmocap x 3 f64),
                   mocap_quat (nmocap x 4 f64): what rendering needs;
  a frame slot per camera   header <Q seq, d t_sim> then height x width x 3 uint8 RGB.
- requests, parent -> worker, on a pipe: <Q seq, I camera mask>. The parent writes the state
  slot (stamped with seq) before the request; closing the pipe asks the worker to exit.
- replies, worker -> parent, on another pipe: <i kind, i camera, Q seq, I text length> then the
  text: READY once the model and GL contexts are up, FRAME when a camera's slot holds the frame of
  request seq, ERROR with a message (the worker exits after it).

The parent's side only blocks in select()/read()/write() on the pipes, which release the GIL, and
copies each frame once out of shared memory. The worker exits when the request pipe reaches EOF
(the parent closed it or died) or when its parent process changes (the parent died while some
other process still holds the pipe), so it never outlives the rig's process.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import traceback
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from drivers import clock
from drivers.errors import ConfigError, ConnectionFailed

REQUEST = struct.Struct("<QI")
REPLY = struct.Struct("<iiQI")
SLOT_HEADER = struct.Struct("<Qd")
READY, FRAME, ERROR = 1, 2, 3
PARENT_CHECK_S = 0.5  # how often an idle worker checks that its parent is alive
# The worker runs at a lower CPU priority than the rig's process. Rendering is best effort; the
# physics thread is not: it holds the GIL while it steps, so if the worker preempted it on a busy
# machine the control thread (which needs the GIL) would wait too. On 2 shared cores this took the
# control loop's period error p99 from 0.0009-2.5 ms to 0.0002-0.55 ms over 8 s runs; when the
# cores are saturated the cameras' rate gives way first (measured_fps shows it).
RENDER_NICE = 10


@dataclass(frozen=True)
class CameraSpec:
    name: str
    sim_camera: str
    height: int
    width: int


@dataclass(frozen=True)
class Layout:
    """Byte offsets of the state slot and the frame slots in the shared block."""

    nq: int
    nmocap: int
    cameras: tuple[CameraSpec, ...]

    @property
    def state_size(self) -> int:
        return SLOT_HEADER.size + 8 * (self.nq + 7 * self.nmocap)

    def frame_offset(self, i: int) -> int:
        off = _align(self.state_size)
        for c in self.cameras[:i]:
            off += _align(SLOT_HEADER.size + c.height * c.width * 3)
        return off

    @property
    def size(self) -> int:
        return self.frame_offset(len(self.cameras))

    def state_arrays(self, buf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        off = SLOT_HEADER.size
        qpos = np.ndarray((self.nq,), np.float64, buf, off)
        off += 8 * self.nq
        mpos = np.ndarray((self.nmocap, 3), np.float64, buf, off)
        off += 8 * 3 * self.nmocap
        mquat = np.ndarray((self.nmocap, 4), np.float64, buf, off)
        return qpos, mpos, mquat

    def pixels(self, buf, i: int) -> np.ndarray:
        c = self.cameras[i]
        return np.ndarray(
            (c.height, c.width, 3), np.uint8, buf, self.frame_offset(i) + SLOT_HEADER.size
        )

    def to_json(self) -> str:
        return json.dumps(
            {"nq": self.nq, "nmocap": self.nmocap, "cameras": [c.__dict__ for c in self.cameras]}
        )

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        d = json.loads(text)
        return cls(d["nq"], d["nmocap"], tuple(CameraSpec(**c) for c in d["cameras"]))


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


# -- rendering (shared by the worker and the stepping-mode SimRig) ------------------------------
class SceneRenderer:
    """One mujoco.Renderer per image size for a model, all bound to the creating thread's GL
    context. Shadows and reflections are off: on software GL they cost ~5x the frame time."""

    def __init__(self, model):
        self.model = model
        self.by_size: dict = {}

    def renderer(self, height: int, width: int):
        import mujoco

        r = self.by_size.get((height, width))
        if r is None:
            try:
                r = mujoco.Renderer(self.model, height, width)
            except Exception as e:  # GL backend missing or broken
                raise ConnectionFailed(
                    f"cannot render the sim cameras offscreen ({e}). Set MUJOCO_GL=egl or "
                    f"MUJOCO_GL=osmesa before starting (install libegl1 or libosmesa6: "
                    f"`bash scripts/dev setup` does)"
                ) from e
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self.by_size[(height, width)] = r
        return r

    def render(self, data, sim_camera: str, height: int, width: int, out=None) -> np.ndarray:
        r = self.renderer(height, width)
        r.update_scene(data, camera=sim_camera)
        return r.render(out=out)

    def close(self) -> None:
        for r in self.by_size.values():
            r.close()
        self.by_size.clear()


def pose(model, data, qpos, mocap_pos=None, mocap_quat=None) -> None:
    """Put `data` in the configuration `qpos` (and mocap pose) for rendering: kinematics, centres
    of mass and camera/light poses, nothing of the dynamics."""
    import mujoco

    data.qpos[:] = qpos
    if model.nmocap:
        data.mocap_pos[:] = mocap_pos
        data.mocap_quat[:] = mocap_quat
    mujoco.mj_kinematics(model, data)
    mujoco.mj_comPos(model, data)
    mujoco.mj_camlight(model, data)


# -- pipes ----------------------------------------------------------------------------------------
def _read_exact(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the parent's side ----------------------------------------------------------------------------
class RenderWorker:
    """The parent's handle on a render worker process. `render()` is called from one thread."""

    START_TIMEOUT_S = 60.0  # building the model and the GL contexts on a loaded machine
    FRAME_TIMEOUT_S = 5.0  # a frame that takes longer means a hung worker

    def __init__(self, task: str, max_width: int, max_height: int, nq: int, nmocap: int,
                 cameras: list[CameraSpec]):
        if len(cameras) > 32:
            raise ConfigError(f"the sim renders at most 32 cameras, {len(cameras)} are configured")
        self.task = task
        self.max_size = (int(max_width), int(max_height))
        self.layout = Layout(nq, nmocap, tuple(cameras))
        self.proc: subprocess.Popen | None = None
        self._shm: shared_memory.SharedMemory | None = None
        self._req_w = -1
        self._rep_r = -1
        self._seq = 0
        self.error = ""  # why the worker stopped serving, once it has

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        """Start the worker and wait until it renders (raises ConnectionFailed if it cannot)."""
        self._shm = shared_memory.SharedMemory(create=True, size=self.layout.size)
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        args = {
            "task": self.task,
            "max_width": self.max_size[0],
            "max_height": self.max_size[1],
            "shm": self._shm.name,
            "layout": self.layout.to_json(),
            "req_fd": req_r,
            "rep_fd": rep_w,
            "parent": os.getpid(),
        }
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "drivers.sim.render_worker", json.dumps(args)],
                pass_fds=(req_r, rep_w),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            os.close(req_r)
            os.close(rep_w)
            self.stop()
            raise
        os.close(req_r)  # the worker holds these ends now; EOF on ours means it died
        os.close(rep_w)
        try:
            kind, _, _, text = self._reply(self.START_TIMEOUT_S, "start")
            if kind != READY:
                raise ConnectionFailed(f"the sim render worker did not start: {text}")
        except BaseException:
            self.stop()
            raise

    def render(self, qpos: np.ndarray, t_sim: float, cameras: list[int], on_frame,
               mocap_pos=None, mocap_quat=None) -> None:
        """Render `cameras` (indices into the layout) of the state qpos; call
        on_frame(i, color_copy, t_sim) for each as it arrives. Raises ConnectionFailed if the
        worker died, hung or failed."""
        if self.error:
            raise ConnectionFailed(self.error)
        assert self._shm is not None
        self._seq += 1
        self._publish(qpos, t_sim, mocap_pos, mocap_quat)
        mask = 0
        for i in cameras:
            mask |= 1 << i
        try:
            _write_all(self._req_w, REQUEST.pack(self._seq, mask))
        except OSError as e:
            self._fail(f"the sim render worker is gone ({self._exit_text()}; {e.strerror})")
        pending = set(cameras)
        deadline = clock.now() + self.FRAME_TIMEOUT_S * max(1, len(cameras))
        while pending:
            kind, i, seq, text = self._reply(deadline - clock.now(), "frame")
            if kind == ERROR:
                self._fail(f"the sim render worker failed: {text}")
            if kind != FRAME or seq != self._seq or i not in pending:
                self._fail(f"the sim render worker broke the protocol (reply {kind}/{i}/{seq})")
            seq_slot, t_slot = SLOT_HEADER.unpack_from(self._shm.buf, self.layout.frame_offset(i))
            if seq_slot != self._seq:
                self._fail(f"the sim render worker's frame slot {i} holds seq {seq_slot}")
            pending.discard(i)
            on_frame(i, self._copy_frame(i), t_slot)

    # Views of the shared block live only inside these two helpers, so none outlives a call (a
    # live view would keep the block from being closed at stop()).
    def _publish(self, qpos, t_sim, mocap_pos, mocap_quat) -> None:
        buf = self._shm.buf
        qs, mp, mq = self.layout.state_arrays(buf)
        qs[:] = qpos
        if self.layout.nmocap:
            mp[:] = mocap_pos
            mq[:] = mocap_quat
        del qs, mp, mq
        SLOT_HEADER.pack_into(buf, 0, self._seq, t_sim)

    def _copy_frame(self, i: int) -> np.ndarray:
        return self.layout.pixels(self._shm.buf, i).copy()  # the one copy of the frame

    def _reply(self, timeout_s: float, what: str) -> tuple[int, int, int, str]:
        deadline = clock.now() + timeout_s
        while True:
            remaining = deadline - clock.now()
            if remaining <= 0:
                self._fail(
                    f"the sim render worker (pid {self.pid}) gave no {what} within "
                    f"{timeout_s:.1f} s"
                )
            ready, _, _ = select.select([self._rep_r], [], [], min(remaining, 0.25))
            if ready:
                break
        try:
            kind, i, seq, n = REPLY.unpack(_read_exact(self._rep_r, REPLY.size))
            text = _read_exact(self._rep_r, n).decode(errors="replace") if n else ""
        except EOFError:
            self._fail(f"the sim render worker exited ({self._exit_text()})")
        return kind, i, seq, text

    def _exit_text(self) -> str:
        if self.proc is None:
            return "not started"
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return f"pid {self.proc.pid} not responding"
        if code < 0:
            return f"pid {self.proc.pid} killed by signal {-code}"
        return f"pid {self.proc.pid} exit code {code}"

    def _fail(self, message: str):
        self.error = message
        raise ConnectionFailed(message)

    def kill(self) -> None:
        """Kill the worker process at once (unblocks a thread waiting for its reply)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def stop(self) -> None:
        """Ask the worker to exit (close its request pipe), kill it if it does not within 2 s,
        and free the shared memory. Idempotent."""
        for attr in ("_req_w", "_rep_r"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=2.0)
        if self._shm is not None:
            try:
                self._shm.close()
            except BufferError:  # a view still held somewhere; the OS frees it at exit
                pass
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
            self._shm = None


# -- the worker's side ----------------------------------------------------------------------------
def _attach(name: str, size: int):
    """The parent's shared block, without handing it to this process's resource tracker (which
    would unlink it when the worker exits)."""
    if sys.version_info >= (3, 13):
        shm = shared_memory.SharedMemory(name=name, track=False)
        return shm.buf, shm.close
    path = Path("/dev/shm") / name.lstrip("/")
    if path.exists():
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return memoryview(mm), mm.close
    from multiprocessing import resource_tracker

    shm = shared_memory.SharedMemory(name=name)
    resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
    return shm.buf, shm.close


def _send(fd: int, kind: int, i: int = 0, seq: int = 0, text: str = "") -> None:
    data = text.encode()
    _write_all(fd, REPLY.pack(kind, i, seq, len(data)) + data)


def serve(args: dict) -> int:
    rep = args["rep_fd"]
    req = args["req_fd"]
    parent = args["parent"]
    # Ctrl-C in a terminal reaches the whole process group: the parent handles it and closes the
    # request pipe, which ends the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(RENDER_NICE)
    except OSError:
        pass
    try:
        import mujoco

        from drivers.sim.scene import build_model

        layout = Layout.from_json(args["layout"])
        buf, close_buf = _attach(args["shm"], layout.size)
        model = build_model(args["task"], args["max_width"], args["max_height"])
        if (model.nq, model.nmocap) != (layout.nq, layout.nmocap):
            raise RuntimeError(
                f"the worker's model has nq={model.nq}, nmocap={model.nmocap}; the rig's has "
                f"nq={layout.nq}, nmocap={layout.nmocap}"
            )
        data = mujoco.MjData(model)
        renderer = SceneRenderer(model)
        for c in layout.cameras:
            renderer.renderer(c.height, c.width)
        qpos, mpos, mquat = layout.state_arrays(buf)
        pixels = [layout.pixels(buf, i) for i in range(len(layout.cameras))]
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        _send(rep, ERROR, text=str(e) if isinstance(e, ConnectionFailed) else repr(e))
        return 1
    _send(rep, READY)
    try:
        while True:
            ready, _, _ = select.select([req], [], [], PARENT_CHECK_S)
            if not ready:
                if os.getppid() != parent:
                    return 0
                continue
            try:
                seq, mask = REQUEST.unpack(_read_exact(req, REQUEST.size))
            except EOFError:
                return 0
            state_seq, t_sim = SLOT_HEADER.unpack_from(buf, 0)
            if state_seq != seq:
                raise RuntimeError(f"state slot holds seq {state_seq}, request {seq}")
            pose(model, data, qpos, mpos, mquat)
            for i, c in enumerate(layout.cameras):
                if mask >> i & 1:
                    renderer.render(data, c.sim_camera, c.height, c.width, out=pixels[i])
                    SLOT_HEADER.pack_into(buf, layout.frame_offset(i), seq, t_sim)
                    _send(rep, FRAME, i, seq)
    except BrokenPipeError:
        return 0  # the parent closed its end: it is stopping or gone
    except BaseException:  # noqa: BLE001
        try:
            _send(rep, ERROR, text=traceback.format_exc(limit=3))
        except OSError:
            pass
        return 1
    finally:
        renderer.close()
        del qpos, mpos, mquat, pixels
        try:
            close_buf()
        except BufferError:
            pass


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m drivers.sim.render_worker ARGS_JSON (started by SimRig)",
              file=sys.stderr)
        return 2
    return serve(json.loads(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
