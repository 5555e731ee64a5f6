"""The background job runner drives a real `main.py train` process: events stream in, SIGTERM
leaves a valid last checkpoint and a cancelled run, and a new runner finds a run again."""

import os
import signal
import time

import pytest

from app.core.jobs import TrainingJob, find_runs
from xr0.model import load_checkpoint
from xr0.train.rundir import CANCEL_FILE, RunDir, read_events

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
ENV = {"OMP_NUM_THREADS": "1"}
ARGS = ["--micro-batch", "2", "--workers", "0", "--checkpoint-every", "1000", "--val-every", "1000",
        "--warmup", "2"]


@pytest.fixture(scope="module")
def store_dir(make_store):
    return make_store("jobs_store", 3, 40)


def wait_for(job, kind, timeout=90.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            ev = job.events.get(timeout=0.5)
        except Exception:
            if not job.alive():
                break
            continue
        seen.append(ev)
        if ev["event"] == kind:
            return seen
    raise AssertionError(f"no {kind!r} event; got {[e['event'] for e in seen]}; "
                         f"stderr: {job.stderr_tail[-5:]}")


def test_events_stream_and_sigterm_cancels_with_a_valid_checkpoint(store_dir, tmp_path):
    """With a data-loader worker, as the presets run: the cancel reaches the whole process group,
    and the worker must leave it to the trainer."""
    got = []
    with_worker = [a if a != "0" or ARGS[i - 1] != "--workers" else "1" for i, a in enumerate(ARGS)]
    job = TrainingJob.start(store_dir, tmp_path / "run", base="xr0-tiny", preset="tiny-scratch",
                            steps=100000, batch=2, val_episodes=1, extra_args=with_worker,
                            on_event=got.append, env=ENV)
    seen = wait_for(job, "step")
    assert seen[0]["event"] == "start" and seen[0]["train_episodes"] == [1, 2]
    assert {"loss", "mse", "freq", "lr", "samples_per_s", "eta_s"} <= set(seen[-1])
    assert os.getpgid(job.pid) == job.pid          # its own process group
    code = job.cancel(timeout=60)
    assert code == 3, job.stderr_tail
    done = [e for e in got if e["event"] == "done"]
    assert done and done[-1]["status"] == "cancelled"
    ckpt = RunDir(tmp_path / "run").last_checkpoint()
    assert ckpt is not None and str(ckpt) == done[-1]["checkpoint"]
    _, _, _, stats = load_checkpoint(ckpt)
    assert stats["cameras"] == ["top", "left_wrist"]
    (run,) = [r for r in find_runs(store_dir) if r.run_dir == (tmp_path / "run").resolve()]
    assert run.status == "cancelled" and run.checkpoint == str(ckpt.resolve())


def test_a_new_runner_finds_a_running_job_follows_it_and_sees_it_die(store_dir, tmp_path):
    job = TrainingJob.start(store_dir, tmp_path / "run", base="xr0-tiny", preset="tiny-scratch",
                            steps=100000, batch=2, val_episodes=1, extra_args=ARGS, env=ENV)
    try:
        wait_for(job, "step")
        # "restart": a fresh look at the store, no reference to the first job object
        (run,) = [r for r in find_runs(store_dir) if r.run_dir == (tmp_path / "run").resolve()]
        assert run.status == "running" and run.pid == job.pid and run.step >= 1
        follower = TrainingJob.attach(run)
        seen = wait_for(follower, "step")
        assert seen[0]["event"] == "start" and follower.alive()
        os.killpg(job.pid, signal.SIGKILL)             # the trainer dies without a word
        assert job.wait(10) == -signal.SIGKILL
        follower.wait(10)
        assert not follower.alive()
        (run,) = [r for r in find_runs(store_dir) if r.run_dir == (tmp_path / "run").resolve()]
        assert run.status == "died"
    finally:
        if job.alive():
            job.cancel(timeout=5)


def test_a_two_process_job_is_found_again_and_cancelled_through_its_run_folder(store_dir,
                                                                              tmp_path):
    """Under torchrun (2 CPU processes): the run is registered once, by rank 0, and a runner
    after a restart finds it running by rank 0's pid; its cancel (a request in the run folder:
    that pid leads no process group) ends the run after a step with a valid last checkpoint,
    and the request is gone."""
    out = tmp_path / "run"
    job = TrainingJob.start(store_dir, out, base="xr0-tiny", preset="tiny-scratch",
                            steps=100000, batch=4, val_episodes=1, processes=2,
                            extra_args=ARGS + ["--device", "cpu"],
                            env={**ENV, "CUDA_VISIBLE_DEVICES": ""})
    try:
        seen = wait_for(job, "step", timeout=150)
        assert seen[0]["event"] == "start" and seen[0]["world_size"] == 2
        (run,) = [r for r in find_runs(store_dir) if r.run_dir == out.resolve()]
        assert run.status == "running" and run.pid not in (None, job.pid)   # rank 0, not torchrun
        follower = TrainingJob.attach(run)
        assert follower.processes == 2
        follower.cancel(timeout=90)
        assert not follower.alive()
        job.wait(30)
        done = [e for e in read_events(out) if e["event"] == "done"]
        assert done and done[-1]["status"] == "cancelled", job.stderr_tail[-5:]
        ckpt = RunDir(out).last_checkpoint()
        assert ckpt is not None and str(ckpt) == done[-1]["checkpoint"]
        load_checkpoint(ckpt)
        (run,) = [r for r in find_runs(store_dir) if r.run_dir == out.resolve()]
        assert run.status == "cancelled"
        assert not (out / CANCEL_FILE).exists()
    finally:
        if job.alive():
            os.killpg(job.pid, signal.SIGKILL)


def test_bad_input_reaches_the_caller_as_an_error_event(store_dir, tmp_path):
    job = TrainingJob.start(store_dir, tmp_path / "run", base=str(tmp_path / "missing"),
                            preset="tiny-scratch", steps=5, env=ENV)
    assert job.wait(60) == 2
    errors = [e for e in list(job.events.queue) if e["event"] == "error"]
    assert errors and "does not exist" in errors[0]["message"]


def test_a_job_outlives_the_process_that_started_it(store_dir, tmp_path):
    """The app starts a training job and is closed: the trainer's stdout and stderr pipes lose
    their reader, and the run must still train to the end, to be found done after a restart."""
    import subprocess
    import sys

    launcher = (
        "import sys, time\n"
        "from app.core.jobs import TrainingJob\n"
        f"job = TrainingJob.start({str(store_dir)!r}, {str(tmp_path / 'run')!r}, base='xr0-tiny',"
        f" preset='tiny-scratch', steps=24, batch=2, val_episodes=1, extra_args={ARGS!r},"
        f" env={ENV!r})\n"
        "while job.events.get(timeout=90)['event'] != 'step':\n"
        "    pass\n"
        "print(job.pid, flush=True)\n"
        "import os; os._exit(0)\n"   # gone at once, as a killed app would be: pipes close
    )
    out = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True,
                         timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[-1])
    (run,) = [r for r in find_runs(store_dir) if r.run_dir == (tmp_path / "run").resolve()]
    assert run.pid == pid
    follower = TrainingJob.attach(run)
    seen = wait_for(follower, "done", timeout=120)
    assert seen[-1]["status"] == "done" and seen[-1]["step"] == 24
    (run,) = [r for r in find_runs(store_dir) if r.run_dir == (tmp_path / "run").resolve()]
    assert run.status == "done" and RunDir(tmp_path / "run").last_checkpoint() is not None


def test_visible_gpus_counts_the_driver_s_gpus_as_cuda_visible_devices_limits_them(tmp_path,
                                                                                   monkeypatch):
    from app.core.jobs import visible_gpus

    assert visible_gpus(tmp_path / "no-driver") == 0
    for i in range(4):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus(tmp_path) == 4
    for value, n in (("0,2", 2), ("", 0), ("-1", 0), ("1,-1,2", 1), ("0,1,2,3,4,5", 4)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus(tmp_path) == n, value
