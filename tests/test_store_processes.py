"""The store open in two processes at once, as the app and its trainer have it: a third open in
the app (the fine-tune tab reading the runs table) must not drop the app's hold on the index, or
the trainer closing its store deletes the write-ahead log under the app's open stores and every
later open fails with a disk I/O error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from store import EpisodeStore

ROOT = Path(__file__).resolve().parent.parent
TRAINER = """
import sys
from store import EpisodeStore
s = EpisodeStore.open(sys.argv[1])
s.add_run("finetune", {}, status="running")
print("open", flush=True)
sys.stdin.readline()
s.add_run("finetune", {}, status="done")
s.close()
"""


def test_another_process_closing_the_store_leaves_ours_working(tmp_path):
    root = tmp_path / "store"
    app = EpisodeStore.open(root)                       # e.g. the Episodes tab's store
    other = subprocess.Popen([sys.executable, "-c", TRAINER, str(root)], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert other.stdout.readline().strip() == "open"
        with EpisodeStore.open(root) as again:          # the runs table read once more
            assert len(again.runs(kind="finetune")) == 1
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(timeout=30) == 0
    finally:
        if other.poll() is None:
            other.kill()
    app.add_run("autonomy", {}, status="running")      # the app writes on
    time.sleep(0.1)
    with EpisodeStore.open(root) as later:
        assert [r["status"] for r in later.runs(kind="finetune")] == ["running", "done"]
        assert len(later.runs(kind="autonomy")) == 1
    app.close()
