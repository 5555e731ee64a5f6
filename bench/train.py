"""Proof that fine-tuning learns: scripted sim demonstrations of transfer cube recorded through
`main.py record --stepping` (every control step and camera frame, whatever the load), xr0-tiny trained from scratch on the CPU with `main.py train --preset
tiny-scratch`, then evaluated with `main.py run --policy CHECKPOINT` over seeded episodes whose
seeds no demonstration used (the sim's own success test, as gym-aloha scores it).

Figures: training samples/s (from the trainer's step events, start-up excluded), peak RSS of the
training process (its own rusage), training wall time, and the success rate of the trained
policy at a third, two thirds and the end of training next to the training time it took. Full
run: 50 demonstrations, the preset's 3000 steps, 50 evaluation episodes per checkpoint; --quick:
3 short demonstrations, 20 steps, 2 evaluation episodes (a smoke test of the path; its success
rate means nothing).

Each command runs as its own process with OMP_NUM_THREADS=1 on the shared CPU. With
XR0_BENCH_TRAIN_DIR=DIR (a new folder) the demonstrations and the trained run are kept there; a
folder holding only store/ trains on the demonstrations recorded there before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import Figure

ROOT = Path(__file__).resolve().parents[1]
EVAL_SEED = 100_000        # evaluation seeds start here; demonstrations use 0, 1, 2, ...
TASK = "transfer the cube"


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a live process and its live descendants, with the children
    they have reaped, from /proc."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def _run(args: list[str], timeout: float) -> tuple[list[dict], float, float, float]:
    """Run `main.py ARGS --json`: (events, wall seconds, CPU seconds, peak RSS in MiB). Each event
    carries _wall_s and _cpu_s: the command's wall and CPU time when this bench read it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args, "--json"],
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
        lines = []
        deadline = t0 + timeout
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, _tree_cpu_s(proc.pid), line))
            if time.monotonic() > deadline:
                proc.kill()
                break
        _, status, usage = os.wait4(proc.pid, 0)  # its usage includes the children it reaped
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read()[-2000:]
            raise RuntimeError(f"main.py {args[0]} exited with {proc.returncode}: {tail}")
    events = []
    for t, cpu, line in lines:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict):
            ev["_wall_s"], ev["_cpu_s"] = t, cpu
            events.append(ev)
    return events, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def run(quick: bool = False) -> Iterator[Figure]:
    demos, seconds = (3, 3.0) if quick else (50, None)
    steps, evals = (20, 2) if quick else (None, 50)
    keep = os.environ.get("XR0_BENCH_TRAIN_DIR")  # keep the store and the run there
    reuse = False
    if keep and Path(keep).exists() and any(Path(keep).iterdir()):
        # a folder from an earlier run that recorded its demonstrations but has no run yet
        # trains on those demonstrations again
        reuse = (Path(keep) / "store").is_dir() and not (Path(keep) / "run").exists()
        if not reuse:
            raise ValueError(f"XR0_BENCH_TRAIN_DIR={keep} holds a run already: give a new "
                             f"folder, or one holding only store/ to train on its episodes")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        base = Path(keep) if keep else Path(tmp)
        store, out = base / "store", base / "run"
        if reuse:
            from store import EpisodeStore

            with EpisodeStore.open(store) as st:
                n = len(st.episodes(status="complete"))
            yield Figure("train", "demonstrations recorded", n, "episodes", anchor=(
                f"scripted sim operator, transfer cube; reused from {store}"))
        else:
            # stepping: every step and camera frame whatever the load on the cores
            rec = ["record", "--rig", "sim", "--task", TASK, "--episodes", str(demos),
                   "--store", str(store), "--stepping"]
            if seconds:
                rec += ["--seconds", str(seconds)]
            _, record_s, _, _ = _run(rec, timeout=3600)
            yield Figure("train", "demonstrations recorded", demos, "episodes", anchor=(
                f"scripted sim operator, transfer cube, stepping mode, {record_s:.0f} s to record"))

        train = ["train", "--store", str(store), "--base", "xr0-tiny", "--preset", "tiny-scratch",
                 "--out", str(out), "--val-episodes", "1" if quick else "2",
                 "--keep-checkpoints", "0"]  # the success curve evaluates earlier checkpoints
        if steps:
            train += ["--steps", str(steps), "--checkpoint-every", str(steps),
                      "--val-every", str(steps)]
        events, train_s, train_cpu_s, rss = _run(train, timeout=6 * 3600)
        step_events = [e for e in events if e["event"] == "step"]
        start = next(e for e in events if e["event"] == "start")
        done = next(e for e in events if e["event"] == "done")
        vals = [e for e in events if e["event"] == "val"]
        detail = {"steps": done["step"], "samples": start["samples"],
                  "trainable_parameters": start["trainable_parameters"],
                  "first_loss": step_events[0]["loss"], "last_loss": step_events[-1]["loss"],
                  "val": [{k: v[k] for k in ("step", "val_loss", "action_error")} for v in vals]}
        yield Figure("train", "tiny-scratch training throughput", step_events[-1]["samples_per_s"],
                     "samples/s", goal="trains the sim task in minutes to an hour on a CPU",
                     anchor="xr0-tiny, 2 cameras at 96x128, batch 16, k_draws 4, 1 thread",
                     detail=detail)
        yield Figure("train", "tiny-scratch peak RSS", rss, "MiB",
                     anchor="the training process's own peak resident memory")
        yield Figure("train", "tiny-scratch training time", train_s, "s",
                     anchor=f"{done['step']} steps including start-up and validation")
        yield Figure("train", "tiny-scratch training CPU time", train_cpu_s, "CPU s",
                     anchor="user + system time of the trainer and its data workers")

        # success against training time: the checkpoints at a third, two thirds and the end
        ckpts = {e["step"]: e for e in events if e["event"] == "checkpoint"}
        total = done["step"]
        marks = sorted({min(ckpts, key=lambda s: abs(s - total * f)) for f in (1 / 3, 2 / 3)}
                       | {total}) if ckpts else [total]
        curve = []
        for step in marks:
            path = done["checkpoint"] if step == total else ckpts[step]["path"]
            ev = next((e for e in events if e["event"] == "checkpoint" and e["step"] == step),
                      {"_wall_s": train_s, "_cpu_s": train_cpu_s})
            at_s, at_cpu = ev["_wall_s"], ev["_cpu_s"]
            events_e, eval_s, _, _ = _run(["run", "--rig", "sim", "--policy", path, "--task", TASK,
                                           "--episodes", str(evals), "--seed", str(EVAL_SEED)],
                                          timeout=6 * 3600)
            summary = next(e for e in events_e if e["event"] == "summary")
            curve.append({"step": step, "training_s": round(at_s, 1), "cpu_s": round(at_cpu, 1),
                          "success_rate": summary["success_rate"], "eval_s": round(eval_s, 1)})
            last = step == total
            yield Figure("train", f"success rate at step {step}", summary["success_rate"],
                         "fraction", goal=">= 0.8 (ACT: 0.86 with 50 scripted demos)" if last else
                         "rises with training time",
                         met=(summary["success_rate"] >= 0.8) if last and not quick else None,
                         anchor=(f"{evals} seeded sim episodes never seen in training (seeds "
                                 f"{EVAL_SEED}+), after {at_s:.0f} s ({at_cpu:.0f} CPU s) of training on "
                                 f"{demos} demonstrations; eval took {eval_s:.0f} s"),
                         detail={"training_s": at_s, "cpu_s": at_cpu, "episodes": evals,
                                 "curve": list(curve)})
