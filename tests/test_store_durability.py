"""Episode store durability: a recording process killed with SIGKILL, and a disk that fills up."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from store import EpisodeStore
from store.video import VideoReader

ROOT = Path(__file__).resolve().parents[1]

RECORDER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from store import EpisodeStore, StoreWriteError
    from store.video import VideoWriter

    store = EpisodeStore.open(sys.argv[1])
    mode = sys.argv[2]
    if mode == "fsize":
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG
        limit = int(sys.argv[3])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    names = [f"j{i}" for i in range(14)]
    t = 1000.0
    for ep in range(100):
        n = 150 if ep < 2 else 10**6
        w = store.begin_episode(task="stack the cups", rig="sim", control_hz=50, joint_names=names,
                                cameras={"top": (64, 48, 30)}, flush_s=0.05)
        # the recorder streams each camera's video into its file from the first frame on
        video = VideoWriter(w.camera_path("top"), 64, 48, 25) if mode == "kill" else None
        if video is None:
            w.camera_path("top").write_bytes(b"frames of episode %d" % ep)
        try:
            for i in range(n):
                t += 0.02
                x = np.full(14, ep * 10000 + i, dtype=float)
                w.add_step(t, x, -x, leader=x + 0.5)
                if i % 2 == 0:
                    if video is not None:  # frame k shows grey level 2k mod 256
                        video.write(np.full((48, 64, 3), i % 256, np.uint8), t)
                    w.add_frame_time("top", t)
                if ep >= 2 and i % 50 == 49:
                    time.sleep(0.06)  # let the writer thread flush
                    print(json.dumps({"mid": w.id, "steps": i + 1}), flush=True)
        except StoreWriteError as e:
            print(json.dumps({"error": str(e), "episode": w.id}), flush=True)
            sys.exit(3)
        if video is not None:
            video.close()
        info = w.finish(success=True)
        print(json.dumps({"done": info.id}), flush=True)
""")


def start(tmp_path, *args):
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "store"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigkill_mid_episode_leaves_store_consistent_and_recoverable(tmp_path):
    proc = start(tmp_path, "kill")
    done, flushed, partial = [], 0, None
    try:
        for line in proc.stdout:
            msg = json.loads(line)
            if "done" in msg:
                done.append(msg["done"])
            elif "mid" in msg:
                partial, flushed = msg["mid"], msg["steps"]
                if flushed >= 200:
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert len(done) == 2 and partial is not None

    store = EpisodeStore.open(tmp_path / "store")
    assert store.recovered == [partial]
    before = {i: digest(store.info(i).folder) for i in done}
    assert [e.id for e in store.episodes()] == done
    for i in done:
        d = store.episode(i)
        assert d.state.shape == (150, 14) and len(d.frame_times["top"]) == 75
        np.testing.assert_array_equal(d.state[:, 0], (i - 1) * 10000 + np.arange(150))
        assert digest(d.info.folder) == before[i]
    info = store.info(partial)
    assert info.status == "incomplete"
    assert info.steps >= flushed  # everything written before the last flush survived
    logged = len(store.episode(partial).frame_times["top"])
    rec = store.recover(partial)
    assert rec.status == "complete" and rec.steps == info.steps
    # the frame-time log and the killed video agree after recovery: every kept frame time has
    # its frame in the file, and frame k is still the k-th frame written
    kept = rec.frame_counts["top"]
    with VideoReader(rec.folder / rec.videos["top"]) as r:
        assert 0 < kept == min(logged, r.frame_count)
        assert logged - kept <= 15 + 8 and r.frame_count - kept <= 15 + 8  # <= a GOP + lookahead
        for k in (0, kept // 2, kept - 1):
            assert abs(float(r.frame(k).mean()) - (2 * k) % 256) < 3
    assert len(store.episode(partial).frame_times["top"]) == kept
    d = store.episode(partial)
    np.testing.assert_array_equal(d.state[:, 0], 20000 + np.arange(rec.steps))
    np.testing.assert_array_equal(d.action, -d.state)
    assert [e.id for e in store.episodes()] == [*done, partial]
    assert all(digest(store.info(i).folder) == before[i] for i in done)


def test_full_disk_stops_recording_and_keeps_earlier_episodes(tmp_path):
    proc = start(tmp_path, "fsize", str(256 * 1024))
    out, err = proc.communicate(timeout=60)
    lines = [json.loads(x) for x in out.splitlines()]
    assert proc.returncode == 3, err
    done = [m["done"] for m in lines if "done" in m]
    [failure] = [m for m in lines if "error" in m]
    assert done == [1, 2]
    assert failure["error"].startswith(f"disk full while writing episode {failure['episode']} to ")
    assert failure["error"].endswith("free space, earlier episodes are intact")

    store = EpisodeStore.open(tmp_path / "store")
    assert [e.id for e in store.episodes()] == done
    for i in done:
        assert store.problem(i) is None
        assert store.episode(i).t.shape == (150,)
    bad = store.info(failure["episode"])
    assert bad.status == "incomplete" and bad.steps > 0
    store.discard(bad.id)
    assert not bad.folder.exists() and [e.id for e in store.episodes()] == done
