"""store.video: streaming writer and random-access reader on small frames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from store.video import VideoReader, VideoReadError, VideoWriteError, VideoWriter

H, W = 64, 96


def smooth_frame(i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r = 128 + 80 * np.sin((xx + 2 * i) / 17.0)
    g = 128 + 80 * np.cos((yy + i) / 13.0)
    b = 128 + 60 * np.sin((xx + yy + 3 * i) / 29.0)
    return np.stack([r, g, b], -1).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def write_clip(path, n=45, quality="high", t0=1000.0, fps=30.0):
    frames = [smooth_frame(i) for i in range(n)]
    times = [t0 + i / fps + (0.004 if i % 3 == 1 else 0.0) for i in range(n)]
    w = VideoWriter(path, W, H, fps, quality=quality)
    for f, t in zip(frames, times):
        w.write(f, t)
    return frames, times, w.close()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_round_trip_high_is_close_and_keeps_count_and_timestamps(tmp_path, suffix):
    path = tmp_path / f"cam{suffix}"
    frames, times, info = write_clip(path)
    assert info.frames == len(frames) and info.stalls == 0 and info.bytes == os.path.getsize(path)
    assert info.lag_ms_p50 is not None and info.t0 == times[0]
    with VideoReader(path) as r:
        assert (len(r), r.width, r.height) == (len(frames), W, H)
        assert r.fps == pytest.approx(30.0, rel=0.01)
        assert r.t0 == pytest.approx(times[0])
        tol = 1.5e-3 if suffix == ".mkv" else 2e-5   # Matroska stores milliseconds
        np.testing.assert_allclose(r.timestamps, np.asarray(times) - times[0], atol=tol)
        worst = min(psnr(r.frame(i), f) for i, f in enumerate(frames))
    assert worst > 35.0, f"PSNR {worst:.1f} dB"


def test_round_trip_lossless_is_exact(tmp_path):
    path = tmp_path / "cam.mp4"
    frames, _, info = write_clip(path, n=20, quality="lossless")
    assert info.codec == "libx264rgb"
    with VideoReader(path) as r:
        for i, f in enumerate(frames):
            np.testing.assert_array_equal(r.frame(i), f)


def test_random_access_equals_sequential_decode(tmp_path):
    path = tmp_path / "cam.mp4"
    write_clip(path, n=70)
    with VideoReader(path) as seq_r:
        seq = [seq_r.frame(i) for i in range(len(seq_r))]
        assert seq_r.seeks == 1   # forward reads never seek again
    order = np.random.default_rng(3).permutation(70)
    with VideoReader(path, cache_frames=4) as r:
        for i in order:
            np.testing.assert_array_equal(r.frame(int(i)), seq[i])
        batch = r.frames([50, 3, 50, 69, -1])
        np.testing.assert_array_equal(batch, np.stack([seq[50], seq[3], seq[50], seq[69], seq[69]]))
        # a random access decodes at most one GOP's worth of frames
        assert r.decoded <= r.seeks * 15 + 5
        small = r.frame(10, size=(32, 48))
        assert small.shape == (32, 48, 3) and small.dtype == np.uint8
        with pytest.raises(IndexError, match="has 70 frames"):
            r.frame(70)


def test_burst_larger_than_one_encode_is_queued_not_dropped(tmp_path):
    path = tmp_path / "cam.mp4"
    n = 120
    frames = [smooth_frame(i) for i in range(n)]  # made beforehand: the burst is only write()
    w = VideoWriter(path, W, H, 30, queue_frames=8)
    t0 = time.perf_counter()
    for i, f in enumerate(frames):  # all at once: far faster than the encoder
        w.write(f, 5.0 + i / 30)
    burst_s = time.perf_counter() - t0
    info = w.close()
    assert info.frames == n
    assert info.stalls > 0 and info.stall_s > 0 and burst_s >= info.stall_s * 0.5
    with VideoReader(path) as r:
        assert len(r) == n


def test_sigkilled_writer_leaves_a_file_that_decodes_its_first_frames(tmp_path):
    path = tmp_path / "cam.mp4"
    earlier = tmp_path / "earlier.mp4"
    write_clip(earlier, n=10)
    before = earlier.read_bytes()
    code = textwrap.dedent(f"""
        import sys, time, numpy as np
        sys.path.insert(0, {os.getcwd()!r})
        from store.video import VideoWriter
        from tests.test_store_video import smooth_frame
        w = VideoWriter({str(path)!r}, {W}, {H}, 30)
        for i in range(100000):
            w.write(smooth_frame(i), time.monotonic())
            if i == 60:
                print("60", flush=True)
            time.sleep(0.005)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=os.getcwd())
    try:
        assert p.stdout.readline().strip() == "60"
        time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with VideoReader(path) as r:
        assert len(r) >= 30
        for i in range(len(r)):
            assert psnr(r.frame(i), smooth_frame(i)) > 35
    assert earlier.read_bytes() == before


def test_unwritable_path_says_so(tmp_path):
    with pytest.raises(VideoWriteError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "such" / "cam.mp4", W, H, 30)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(VideoWriteError, match="not writable"):
            VideoWriter(ro / "cam.mp4", W, H, 30)
    finally:
        ro.chmod(0o700)


def test_bad_frame_and_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown video quality"):
        VideoWriter(tmp_path / "a.mp4", W, H, 30, quality="best")
    with pytest.raises(ValueError, match="must end in"):
        VideoWriter(tmp_path / "a.avi", W, H, 30)
    w = VideoWriter(tmp_path / "a.mp4", W, H, 30)
    with pytest.raises(ValueError, match="expected a 64x96x3 uint8"):
        w.write(np.zeros((H, W), np.uint8), 0.0)
    w.close()


def test_disk_error_surfaces_on_next_write_or_close(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    # /dev/full has no suffix; write through a symlink named .mp4 that points at it
    link = tmp_path / "full.mp4"
    os.symlink("/dev/full", link)
    w = VideoWriter(link, W, H, 30, quality="lossless")
    with pytest.raises(VideoWriteError, match="disk holding .* is full"):
        for i in range(200):
            w.write(smooth_frame(i), i / 30)
            time.sleep(0.002)
        w.close()


def test_missing_empty_or_corrupted_video_gives_a_clear_message(tmp_path):
    with pytest.raises(VideoReadError, match="missing"):
        VideoReader(tmp_path / "gone.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty"):
        VideoReader(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(os.urandom(4096))
    with pytest.raises(VideoReadError, match="corrupted or not a video"):
        VideoReader(tmp_path / "junk.mp4")
