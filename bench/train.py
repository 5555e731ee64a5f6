"""Proof that fine-tuning learns: scripted sim demonstrations of transfer cube recorded through
`main.py record --stepping` (every control step and camera frame, whatever the load), xr0-tiny
trained from scratch on the CPU with `main.py train --preset tiny-scratch` in the staged recipe
below (STAGES), then evaluated with `main.py run --policy CHECKPOINT --strategy ensemble` over
seeded episodes whose seeds no demonstration used (the sim's own success test, as gym-aloha
scores it).

Figures: training samples/s (from the trainers' step events, start-up excluded), peak RSS of the
training processes (their own rusage), training wall and CPU time, and the success rate after
each of the last three stages next to the training time it took. Full run: 150 demonstrations,
19000 steps in five stages, 50 evaluation episodes per evaluated stage; --quick: 3 short
demonstrations, 4 steps per stage, 2 evaluation episodes (a smoke test of the path; its success
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


# The recipe that reached the goal (README, Fine-tuning proof): the top camera at 192x256 (the
# cube 6 px wide), xr0-tiny from scratch, then fine-tunes that add state noise, heavy state
# dropout (the frames must carry the cube's position) and finally turn the random crop off (a
# fixed camera's image position is the cube's position). Each stage starts from the last
# checkpoint of the one before with a fresh cosine schedule.
VIEW = ["--cameras", "top", "--image-size", "192x256"]
STAGES: list[tuple[str, int, list[str]]] = [
    ("from scratch", 8000, ["--state-dropout", "0.3"]),
    ("state noise", 2500, ["--lr", "1e-4", "--warmup", "50", "--state-dropout", "0.3",
                           "--state-noise", "0.05"]),
    ("state dropout 0.8", 2500, ["--lr", "1e-4", "--warmup", "50", "--state-dropout", "0.8",
                                 "--state-noise", "0.05"]),
    ("crop off", 2000, ["--lr", "1e-4", "--warmup", "50", "--state-dropout", "0.8",
                        "--state-noise", "0.05", "--crop-scale", "1"]),
    ("crop off, longer", 4000, ["--lr", "1.5e-4", "--warmup", "50", "--state-dropout", "0.8",
                                "--state-noise", "0.05", "--crop-scale", "1"]),
]
STRATEGY = "ensemble"     # chunk joining for the evaluation (the best measured on this policy)


def run(quick: bool = False) -> Iterator[Figure]:
    demos, seconds = (3, 3.0) if quick else (150, None)
    evals = 2 if quick else 50
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

        events, train_s, train_cpu_s, rss = [], 0.0, 0.0, 0.0
        base, stage_ends = "xr0-tiny", []
        for i, (name, steps, extra) in enumerate(STAGES):
            steps = 4 if quick else steps
            out_i = out / f"stage{i + 1}"
            train = ["train", "--store", str(store), "--base", base, "--preset", "tiny-scratch",
                     "--out", str(out_i), "--val-episodes", "1" if quick else "2",
                     "--keep-checkpoints", "0", "--steps", str(steps), *VIEW, *extra]
            if quick:
                train += ["--checkpoint-every", str(steps), "--val-every", str(steps)]
            evs, wall, cpu, peak = _run(train, timeout=6 * 3600)
            for ev in evs:                 # times since the start of the first stage
                ev["_wall_s"] += train_s
                ev["_cpu_s"] += train_cpu_s
                ev["_stage"] = name
            events += evs
            train_s, train_cpu_s, rss = train_s + wall, train_cpu_s + cpu, max(rss, peak)
            done = next(e for e in evs if e["event"] == "done")
            base = done["checkpoint"]
            stage_ends.append((name, done, train_s, train_cpu_s))
        step_events = [e for e in events if e["event"] == "step"]
        start = next(e for e in events if e["event"] == "start")
        vals = [e for e in events if e["event"] == "val"]
        total_steps = sum(d["step"] for _, d, _, _ in stage_ends)
        detail = {"steps": total_steps, "stages": [n for n, _, _, _ in stage_ends],
                  "samples": start["samples"], "trainable_parameters": start["trainable_parameters"],
                  "first_loss": step_events[0]["loss"], "last_loss": step_events[-1]["loss"],
                  "val": [{k: v[k] for k in ("_stage", "step", "val_loss", "action_error")}
                          for v in vals]}
        sps = [e["samples_per_s"] for e in step_events[-50:]]
        yield Figure("train", "tiny-scratch training throughput", sum(sps) / len(sps),
                     "samples/s", goal="trains the sim task in minutes to an hour on a CPU",
                     anchor="xr0-tiny, top camera at 192x256, batch 16, k_draws 4, 1 thread; "
                            "mean of the last 50 step events", detail=detail)
        yield Figure("train", "tiny-scratch peak RSS", rss, "MiB",
                     anchor="the training processes' own peak resident memory (largest stage)")
        yield Figure("train", "tiny-scratch training time", train_s, "s",
                     anchor=f"{len(STAGES)} stages, {total_steps} steps, start-up and "
                            "validation included")
        yield Figure("train", "tiny-scratch training CPU time", train_cpu_s, "CPU s",
                     anchor="user + system time of the trainers and their data workers")

        # success against training time: the end of each of the last three stages
        curve = []
        for k, (name, done, at_s, at_cpu) in enumerate(stage_ends):
            last = k == len(stage_ends) - 1
            if k < len(stage_ends) - 3:
                continue
            events_e, eval_s, _, _ = _run(["run", "--rig", "sim", "--policy", done["checkpoint"],
                                           "--task", TASK, "--episodes", str(evals), "--seed",
                                           str(EVAL_SEED), "--strategy", STRATEGY],
                                          timeout=6 * 3600)
            summary = next(e for e in events_e if e["event"] == "summary")
            curve.append({"stage": name, "training_s": round(at_s, 1), "cpu_s": round(at_cpu, 1),
                          "success_rate": summary["success_rate"], "stages": summary["stages"],
                          "eval_s": round(eval_s, 1)})
            yield Figure("train", f"success rate after stage '{name}'", summary["success_rate"],
                         "fraction", goal=">= 0.8 (ACT: 0.86 with 50 scripted demos)" if last else
                         "rises with training time",
                         met=(summary["success_rate"] >= 0.8) if last and not quick else None,
                         anchor=(f"{evals} seeded sim episodes never seen in training (seeds "
                                 f"{EVAL_SEED}+, --strategy {STRATEGY}), after {at_s:.0f} s "
                                 f"({at_cpu:.0f} CPU s) of training on {demos} demonstrations; "
                                 f"eval took {eval_s:.0f} s"),
                         detail={"training_s": at_s, "cpu_s": at_cpu, "episodes": evals,
                                 "curve": list(curve)})
