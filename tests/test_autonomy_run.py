"""AutonomyRun on the real-time sim rig (RigSession, physics thread, real store) with the scripted
chunk policy and an xr0-tiny checkpoint, and `main.py run` on an emulated Dynamixel rig: start,
pause, resume, takeover with a recorded correction episode, release without a jump, stop with
saved telemetry, e-stop, a failing policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app.core.autonomy_run import AutonomyRun, load_segments, past_runs
from app.core.rig_session import RigSession
from app.core.scripted_policy import ScriptedChunkPolicy
from drivers.safety import SafetyFilter
from store import EpisodeStore
from xr0.runtime import Flag, load_run

ROOT = Path(__file__).resolve().parents[1]


def wait_for(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


class Commands:
    """Every command the control loop sent (None while the followers held), as a listener,
    with the followers' measured pose at that step."""

    def __init__(self, session):
        self.rows: list[np.ndarray | None] = []
        self.present: list[np.ndarray] = []
        session.add_listener(self)

    def __call__(self, rec) -> None:
        self.present.append(rec.state.follower.copy())
        self.rows.append(None if rec.command is None else rec.command.copy())

    def sent(self) -> np.ndarray:
        return np.array([c for c in list(self.rows) if c is not None])

    def assert_no_jump(self, limit: np.ndarray) -> None:
        """Each command moved each joint at most one step's limit from the command before it,
        or, where a new controller took over (teleop after the policy, or after a hold), from
        where that joint measurably was. A gripper can sit well short of its command (closing
        on the cube), and a controller taking over starts from the measured pose; what is never
        allowed is a command that leads the arm more than one step away from both."""
        rows, present = list(self.rows), list(self.present)
        last = None
        for cmd, here in zip(rows, present):
            if cmd is None:
                continue
            if last is not None:
                ok = (np.abs(cmd - last) <= limit + 1e-9) | (np.abs(cmd - here) <= limit + 1e-9)
                assert ok.all(), (f"a jump: {np.round(last, 3)} -> {np.round(cmd, 3)} with the "
                                  f"followers at {np.round(here, 3)}, limit {limit}")
            last = cmd


def actions_after(run, n: int) -> int:
    """How many commanded (non-held) steps the runtime's telemetry holds beyond n."""
    if run.telemetry is None:  # the runtime has not stepped yet
        return -n
    snap = run.telemetry.snapshot()
    return int(np.isfinite(snap["step_action"]).all(axis=1).sum()) - n


@pytest.fixture
def session(sim_config):
    s = RigSession(sim_config.with_(cameras=()))  # the scripted policy plans from the sim state
    with s:
        yield s


@pytest.fixture
def store(tmp_path):
    with EpisodeStore.open(tmp_path / "store") as st:
        yield st


def start_scripted(session, store=None, **kw) -> AutonomyRun:
    events: list[dict] = []
    run = AutonomyRun(session, ScriptedChunkPolicy(session.rig, chunk_length=50),
                      instruction="transfer the cube", store=store, on_event=events.append, **kw)
    run.events = events
    assert run.state == "idle" and run.telemetry is None
    run.start()
    assert run.wait("running", 10.0), (run.state, run.error)
    wait_for(lambda: run.telemetry is not None and actions_after(run, 0) > 20, 10.0,
             "commands to flow")
    return run


def test_start_pause_resume_stop_saves_telemetry(session, store):
    cmds = Commands(session)
    run = start_scripted(session, store)
    n0 = len(run.telemetry.snapshot()["step_index"])
    time.sleep(0.3)
    assert len(run.telemetry.snapshot()["step_index"]) > n0  # telemetry grows
    assert len(run.telemetry.chunks()) >= 2 and session.source is not None

    run.pause()
    assert run.state == "paused"
    time.sleep(0.1)
    held = session.rig.targets()
    time.sleep(0.4)
    np.testing.assert_array_equal(session.rig.targets(), held)  # the followers hold
    assert run.telemetry.snapshot(last=5)["step_flags"][-1] & Flag.PAUSED

    run.resume()
    assert run.state == "running"
    n = actions_after(run, 0)
    wait_for(lambda: actions_after(run, n) > 20, 10.0, "commands after resume")
    assert not np.array_equal(session.rig.targets(), held)

    run.stop()
    run.stop()  # idempotent
    assert run.state == "stopped" and session.source is None and run.error == ""
    wait_for(lambda: len(cmds.rows) > 0 and cmds.rows[-1] is None, 1.0, "a held step")
    held = session.rig.targets()
    time.sleep(0.3)
    np.testing.assert_array_equal(session.rig.targets(), held)
    # a resume, takeover or release after stop does nothing
    run.resume()
    run.take_over()
    run.release()
    assert run.state == "stopped" and session.source is None

    [path] = run.saved
    log = load_run(path)
    assert log.meta["ended"] == "stopped" and log.meta["run_id"] == run.run_id
    assert log.meta["strategy"] == "xr0" and len(log.step_index) > 50
    assert len(log.chunk_id) >= 2 and (log.step_flags & Flag.PAUSED).any()
    [row] = past_runs(store)
    assert row["kind"] == "autonomy" and row["status"] == "stopped"
    assert row["config"]["instruction"] == "transfer the cube"
    assert Path(row["paths"]["run_dir"]) == run.run_dir == path.parent
    assert len(load_segments(row["paths"]["run_dir"])[0].step_index) == len(log.step_index)
    assert [e["state"] for e in run.events if e["event"] == "state"] == [
        "warming", "running", "paused", "running", "stopped"]
    # every command the followers got kept within the rig's per-step limit
    sent = cmds.sent()
    assert len(sent) > 50
    limit = SafetyFilter(*session.rig.limits(), session.config.safety).max_step
    assert (np.abs(np.diff(sent, axis=0)) <= limit + 1e-9).all()


def test_a_release_before_any_correction_step_discards_the_empty_episode(session, store):
    """Take over and release within one control tick: the correction episode has no steps.
    It is discarded (nothing incomplete is left in the store) and the operator sees no error."""
    from app.core.recorder import Recording

    run = start_scripted(session, store)
    run.take_over()
    wait_for(lambda: any(e["event"] == "correction_started" for e in run.events), 10.0,
             "the correction recording")
    # the watcher's recording, replaced by one that gets no control steps: a release landing
    # between the recording's start and the control loop's next tick (swapped in one
    # assignment: a watcher tick that saw no recording would start another one)
    empty = Recording(session, store, "transfer the cube", tags=("correction",))
    session.remove_listener(empty._on_step)
    started, run._recording = run._recording, empty
    started.discard()
    run.release()
    assert run.state == "running" and run.corrections == []
    [gone] = [e for e in run.events if e["event"] == "correction_abandoned"]
    assert gone["episode"] == empty.writer.id and "no steps" in gone["reason"]
    run.stop()
    assert not [e for e in run.events if e["event"] == "error"], run.events
    assert store.episodes() == []


def test_takeover_records_a_correction_and_release_resumes_without_a_jump(session, store):
    cmds = Commands(session)
    run = start_scripted(session, store)
    run.take_over()
    assert run.state == "takeover" and session.source is None
    assert len(run.saved) == 1  # the first policy segment is saved at the takeover
    wait_for(lambda: session.status().teleop == "engaged", 10.0, "teleop to engage")
    wait_for(lambda: any(e["event"] == "correction_started" for e in run.events), 2.0,
             "the correction recording")
    time.sleep(1.0)
    run.release()
    assert run.state == "running" and session.status().teleop == "idle"
    [eid] = run.corrections
    info = store.info(eid)
    assert "correction" in info.tags and info.status == "complete" and info.steps >= 30
    assert info.task == "transfer the cube"
    n = actions_after(run, 0)
    wait_for(lambda: actions_after(run, n) > 40, 10.0, "the policy after release")
    run.stop()
    assert [load_run(p).meta["ended"] for p in run.saved] == ["takeover", "stopped"]
    limit = SafetyFilter(*session.rig.limits(), session.config.safety).max_step
    assert len(cmds.sent()) > 50
    cmds.assert_no_jump(limit)
    states = [e["state"] for e in run.events if e["event"] == "state"]
    assert states == ["warming", "running", "takeover", "running", "stopped"]


def test_estop_stops_the_run_for_good(session, store):
    run = start_scripted(session, store)
    session.estop()
    assert run.wait("stopped", 1.0) and "e-stop" in run.reason
    assert session.source is None
    targets = session.rig.targets()
    run.resume()
    run.release()
    run.take_over()
    session.release_estop()
    time.sleep(0.5)
    assert run.state == "stopped" and session.source is None  # never resumes by itself
    np.testing.assert_array_equal(session.rig.targets(), targets)
    assert load_run(run.saved[-1]).meta["ended"] == "estop"
    assert past_runs(store)[0]["status"] == "estopped"
    with pytest.raises(ValueError, match="starts once"):
        run.start()


def test_an_estop_between_the_watchers_reads_is_reported_as_the_estop(session, store,
                                                                      monkeypatch):
    """The watcher reads the source, the loop and the e-stop flag one after the other; an e-stop
    landing among those reads (it clears the source) is still reported as an e-stop."""
    run = start_scripted(session, store)
    real_status, fired = session.status, []

    def status():
        if not fired and sys._getframe(1).f_code.co_name == "_watch":
            fired.append(True)
            session.estop()  # the operator's e-stop, in the middle of the watcher's look
        return real_status()

    monkeypatch.setattr(session, "status", status)
    assert run.wait("stopped", 2.0) and fired
    assert "e-stop" in run.reason, run.reason
    wait_for(lambda: past_runs(store)[0]["status"] == "estopped", 10.0,
             "the run's record to say e-stopped")  # written after the state changes


def test_estop_during_takeover_keeps_the_correction_incomplete(session, store):
    run = start_scripted(session, store)
    run.take_over()
    wait_for(lambda: any(e["event"] == "correction_started" for e in run.events), 10.0,
             "the correction recording")
    [eid] = [e["episode"] for e in run.events if e["event"] == "correction_started"]
    time.sleep(0.3)
    session.estop()
    assert run.wait("stopped", 1.0) and "e-stop" in run.reason
    run.release()  # too late: nothing restarts
    time.sleep(0.3)
    assert run.state == "stopped" and session.source is None and run.corrections == []
    assert session.status().teleop == "stopped"
    assert store.info(eid).status == "incomplete"
    assert [load_run(p).meta["ended"] for p in run.saved] == ["takeover"]


def test_injected_delay_is_what_the_runtime_measures(session, tmp_path):
    run = start_scripted(session, delay=5, run_dir=tmp_path / "run")  # 5 steps = 100 ms at 50 Hz
    wait_for(lambda: len(run.telemetry.latencies_ms()) >= 3, 10.0, "three chunks")
    lat = run.telemetry.latencies_ms()
    assert lat.min() >= 100.0 and run.state == "running"
    assert min(c.d for c in run.telemetry.chunks()[1:]) >= 5  # the delay estimate follows
    run.stop()


class SlowToWarm:
    """A model-like policy (no sim planner) whose calls take 0.4 s: it is warmed up first."""

    chunk_length, supports_prefix = 50, True

    def __init__(self):
        self.calls = 0

    def infer(self, obs, prefix):
        self.calls += 1
        time.sleep(0.4)
        out = np.repeat(obs.state[None], self.chunk_length, 0)
        if prefix is not None:
            out[: len(prefix)] = prefix
        return out


def test_estop_while_warming_up_never_moves(session, tmp_path):
    policy = SlowToWarm()
    run = AutonomyRun(session, policy, strategy="naive", run_dir=tmp_path / "run")
    run.start()
    wait_for(lambda: policy.calls >= 1, 2.0, "the warm-up call")
    assert run.state == "warming"
    session.estop()
    assert run.wait("stopped", 0.5) and "warmed up" in run.reason
    time.sleep(1.2)  # the warm-up calls end meanwhile
    assert run.state == "stopped" and session.source is None and run.saved == []


class FailingPolicy:
    """The scripted policy, raising from its third chunk on (a model that fails mid-run)."""

    def __init__(self, rig):
        self.inner = ScriptedChunkPolicy(rig, chunk_length=50)
        self.chunk_length, self.supports_prefix = 50, True
        self.capture = self.inner.capture
        self.calls = 0

    def infer(self, obs, prefix):
        self.calls += 1
        if self.calls >= 3:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return self.inner.infer(obs, prefix)


def test_a_policy_that_raises_leaves_the_followers_holding(session, tmp_path):
    run = AutonomyRun(session, FailingPolicy(session.rig), instruction="x",
                      run_dir=tmp_path / "run")
    run.start()
    assert run.wait("failed", 15.0), run.state
    assert "device-side assert" in run.error and session.source is None
    time.sleep(0.1)
    held = session.rig.targets()
    time.sleep(0.4)
    np.testing.assert_array_equal(session.rig.targets(), held)
    st = session.status()
    assert st.running and not st.error  # the control loop goes on, holding
    assert load_run(run.saved[0]).meta["ended"] == "failed"
    doc = json.loads((tmp_path / "run" / "run.json").read_text())
    assert doc["state"] == "failed" and "device-side assert" in doc["error"]


def test_refused_before_anything_moves(session):
    class NoPrefix:
        chunk_length, supports_prefix = 20, False

        def infer(self, obs, prefix):
            return np.zeros((20, 14))

    with pytest.raises(ValueError, match="clean prefix"):
        AutonomyRun(session, NoPrefix(), strategy="xr0")
    with pytest.raises(ValueError, match="unknown strategy"):
        AutonomyRun(session, NoPrefix(), strategy="fast")
    session.estop()
    run = AutonomyRun(session, NoPrefix(), strategy="naive")
    with pytest.raises(ValueError, match="e-stop is active"):
        run.start()
    assert run.state == "idle"


# -- an XR0 checkpoint ----------------------------------------------------------------------------
H = 50


def save_tiny_checkpoint(d: Path, cameras: list[str]) -> Path:
    import torch

    from xr0.data.layout import ActionLayout
    from xr0.data.stats import compute_stats
    from xr0.data.synthetic import RIG_JOINT_NAMES, step_vectors
    from xr0.model.checkpoint import save_checkpoint
    from xr0.model.config import preset
    from xr0.model.tokenizer import load_tokenizer
    from xr0.model.xr0 import XR0Model

    torch.manual_seed(0)
    cfg = preset("xr0-tiny", action_length=H, image_size=(64, 64))
    states, actions = zip(*(step_vectors(60, len(RIG_JOINT_NAMES), s) for s in range(3)))
    ns = compute_stats(list(states), list(actions), RIG_JOINT_NAMES, chunk=H,
                       action_mode="absolute")
    stats = {"norm_stats": ns.to_dict(),
             "layout": ActionLayout.from_joint_names(RIG_JOINT_NAMES).to_dict(),
             "cameras": cameras, "view_labels": list(cfg.view_labels),
             "action_mode": "absolute", "image_size": [64, 64], "chunk": H,
             "async_post_trained": True}
    save_checkpoint(XR0Model.from_config(cfg), cfg, d, stats=stats, tokenizer=load_tokenizer())
    return d


@pytest.fixture(scope="module")
def sim_ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), ["top", "left_wrist"])


def test_xr0_checkpoint_runs_on_the_realtime_sim(sim_config, sim_ckpt, tmp_path):
    """The rig has three cameras, the policy was trained on two of them: it sees those two."""
    import torch

    from app.core.policies import load_chunk_policy

    torch.set_num_threads(1)  # 2 shared cores: the control loop and the sim need the other
    policy = load_chunk_policy(str(sim_ckpt), instruction="transfer the cube")
    assert {c.name for c in sim_config.cameras} == {"top", "left_wrist", "right_wrist"}
    with RigSession(sim_config) as s:
        run = AutonomyRun(s, policy, k=10, instruction="transfer the cube",
                          run_dir=tmp_path / "run", policy_name=str(sim_ckpt))
        assert run.cameras == ("top", "left_wrist")
        run.start()
        assert run.state == "warming"
        run.wait(("running", "failed"), 30.0)
        assert run.state == "running", run.error
        wait_for(lambda: run.state != "running" or (actions_after(run, 0) > 30
                                                     and len(run.telemetry.latencies_ms()) >= 3),
                 20.0, "chunks from the model")
        assert run.state == "running", run.error
        m = run.metrics()
        assert m["latency_ms_p50"] > 0 and m["chunks"] >= 3 and m["period_error_ms_p99"] >= 0
        run.stop()
    [path] = run.saved
    log = load_run(path)
    assert log.meta["policy"] == str(sim_ckpt) and log.chunk_actions.shape[1:] == (H, 14)
    arrived = log.chunk_arrival >= 0
    assert arrived.sum() >= 3 and np.isfinite(log.chunk_latency_ms[arrived]).all()


# -- main.py run on an emulated Dynamixel rig ------------------------------------------------------

def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def emulated_rig_toml(er, path: Path, recording: Path, spec) -> Path:
    from drivers.config import RIGS_DIR

    text = (RIGS_DIR / "aloha.toml").read_text()
    text = text[: text.index("[[cameras]]")]
    for src, arm in zip(er.source_config.arms, er.config.arms):
        text = text.replace(f'"{src.port}"', json.dumps(arm.port))
        text = text.replace(f'"{src.calibration}"', json.dumps(arm.calibration))
    for name in ("cam_high", "cam_left_wrist"):  # two views of one recording
        text += (f'[[cameras]]\nname = "{name}"\nplayback = {json.dumps(str(recording))}\n'
                 f"width = {spec.width}\nheight = {spec.height}\nfps = {spec.fps}\n\n")
    path.write_text(text)
    return path


def test_cli_run_on_a_hardware_rig_needs_yes_and_sigint_is_an_estop(tmp_path):
    from drivers.config import load_rig_config
    from drivers.dynamixel.emulator import EmulatedRig
    from drivers.realsense.synthetic import SyntheticSpec, write_recording

    spec = SyntheticSpec(width=64, height=48, fps=30, frames=90, depth=False,
                         serial="000000000030")
    recording = write_recording(tmp_path / "cam.db3", spec)
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", ["cam_high", "cam_left_wrist"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with EmulatedRig(load_rig_config("aloha"), tmp_path / "cal") as er:
        rig = emulated_rig_toml(er, tmp_path / "rig.toml", recording, spec)
        args = [sys.executable, str(ROOT / "main.py"), "run", "--rig", str(rig), "--policy",
                str(ckpt), "--task", "transfer the cube", "--k", "10", "--seconds", "60",
                "--save", str(tmp_path / "runs"), "--json"]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        assert r.returncode == 2, r.stderr[-2000:]
        err = json.loads(r.stdout.splitlines()[-1])
        assert "--yes" in err["message"] and "Nothing has moved" in err["message"]
        assert "ramp" in err["message"] and "'aloha-template'" in err["message"]
        assert not any(on for arm in er.torque().values() for on in arm.values())

        proc = subprocess.Popen(args + ["--yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT, env=env)
        events = []
        try:
            for line in proc.stdout:
                events.append(json.loads(line))
                if events[-1].get("state") == "running":
                    break
            assert events and events[-1].get("state") == "running", proc.stderr.read()[-3000:]
            followers = {n: t for n, t in er.torque().items() if "follower" in n}
            assert all(all(t.values()) for t in followers.values())  # torque on while running
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        events += [json.loads(x) for x in out.splitlines()]
        assert proc.returncode == 130, err[-3000:]
        assert "e-stop (SIGINT)" in err and "torque is now off" in err
        [ep] = [e for e in events if e["event"] == "episode"]
        assert ep["state"] == "stopped" and "e-stop" in ep["reason"] and ep["seed"] is None
        assert events[-1]["event"] == "estop"
        assert not any(on for arm in er.torque().values() for on in arm.values())
    # the checkpoint ran in a local policy server process, which is gone with the run
    servers = [d for d in Path("/proc").iterdir() if d.name.isdigit()
               and _cmdline(d).count(str(ckpt)) and "serve" in _cmdline(d)]
    assert not servers, [_cmdline(d) for d in servers]
    log = load_run(ep["telemetry"][0])
    assert log.meta["ended"] == "estop" and log.meta["rig"] == "aloha-template"
    assert len(log.step_index) > 10  # the policy's runtime was stepped by the control loop
