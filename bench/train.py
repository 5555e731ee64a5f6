"""Proof that fine-tuning learns: scripted sim demonstrations of transfer cube recorded through
`main.py record --stepping --handover-delay HANDOVER_DELAY` (every control step and camera frame,
whatever the load; the left arm comes in for the hand-over after a seeded extra wait, so the
closing of its gripper follows its arrival, not the clock; with `--aim-noise AIM_NOISE` when that
is set, the operator's first reach misses the cube by a seeded offset and corrects it), xr0-tiny
trained from scratch on the CPU with `main.py train --preset tiny-scratch` in the staged recipe
below (STAGES), then evaluated with `main.py run --policy CHECKPOINT --strategy ensemble` over
seeded episodes whose seeds no demonstration used (the sim's own success test, as gym-aloha
scores it).

Figures: training samples/s (from the trainers' step events, start-up excluded), peak RSS of the
training processes (their own rusage), training wall and CPU time, and the success rate at
checkpoints through the training (CURVE: a third and two thirds of the last stage, and the end of
each stage) next to the training time it took. Full run: 150 demonstrations, 6000 steps, 50
evaluation episodes per evaluated checkpoint; --quick: 3 short demonstrations, 4 steps per stage,
2 evaluation episodes (a smoke test of the path; its success rate means nothing).

Each command runs as its own process: the trainers with a thread per core (up to 4), the
recording and each evaluation process with one (an evaluation runs a process per core, each on
its share of the seeds). The full bench
takes hours, so it can be stopped and continued: with XR0_BENCH_TRAIN_DIR=DIR the demonstrations,
the trained stages and bench.json (the recipe, what each finished command cost, the evaluations)
are kept there, and running the bench again on DIR records only the demonstrations still missing,
skips the stages that finished, resumes a cut-short stage from its last checkpoint and skips the
evaluations done. A DIR holding only store/ trains on the demonstrations recorded there (seeds 0,
1, 2, ...).
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

from bench import BenchFailed, BenchStopped, Figure

ROOT = Path(__file__).resolve().parents[1]
EVAL_SEED = 100_000        # evaluation seeds start here; demonstrations use 1, 2, 3, ...
TASK = "transfer the cube"


class CommandFailed(BenchFailed):
    """A `main.py` command exited with an error; what it cost and printed until then."""

    def __init__(self, message: str, code: int, events: list[dict], wall: float, cpu: float,
                 rss: float):
        super().__init__(message)
        self.code, self.events, self.wall, self.cpu, self.rss = code, events, wall, cpu, rss


def _run(args: list[str], timeout: float, threads: int = 1, launcher: tuple[str, ...] = ()
         ) -> tuple[list[dict], float, float, float]:
    """Run `main.py ARGS --json` (after `python LAUNCHER...`, e.g. `-m torch.distributed.run
    ...`) with `threads` compute threads: (events, wall seconds, CPU seconds, peak RSS in MiB);
    a failure raises CommandFailed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *launcher, str(ROOT / "main.py"), *args,
                                 "--json"],
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
        lines = []
        deadline = t0 + timeout
        for line in proc.stdout:
            lines.append(line)
            if time.monotonic() > deadline:
                proc.kill()
                break
        _, status, usage = os.wait4(proc.pid, 0)  # its usage includes the children it reaped
        code = os.waitstatus_to_exitcode(status)
        wall, cpu = time.monotonic() - t0, usage.ru_utime + usage.ru_stime
        events = []
        for line in lines:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(ev, dict):
                events.append(ev)
        if code != 0:
            err.seek(0)
            raise CommandFailed(f"main.py {args[0]} exited with {code}: {err.read()[-2000:]}",
                                code, events, wall, cpu, usage.ru_maxrss / 1024.0)
    return events, wall, cpu, usage.ru_maxrss / 1024.0


# The recipe (README, Fine-tuning proof): the top camera at 192x256 (the cube 6 px wide), action
# chunks of 100 steps (2 s: from the first frames on, each chunk reaches the grasp, so where the
# cube lies is a large part of every early target), xr0-tiny from scratch with spatial-softmax
# keypoints in its vision tower, heavy state dropout and state noise (the frames must carry the
# cube's position; states off the demonstrated paths lead back to them), no random crop (a fixed
# camera's image position is the cube's position). One stage: a second one, the same at a lower
# peak learning rate from the first's last checkpoint with a fresh cosine schedule, took success
# on seeds 100000-100049 from 44/50 to 12/50 on these demonstrations, and from 43/50 to 38/50 on
# demonstrations without the hand-over delay (README, Fine-tuning proof; one run each).
VIEW = ["--cameras", "top", "--image-size", "192x256", "--chunk", "100"]
_RECIPE = ["--crop-scale", "1", "--state-dropout", "0.8", "--state-noise", "0.05"]
STAGES: list[tuple[str, int, list[str]]] = [
    ("from scratch", 6000, ["--vision-keypoints", "32", *_RECIPE]),
]
# where success is measured against training time: these fractions of the last stage's steps
# (rounded down to a checkpoint), and the end of every stage
CURVE = (1 / 3, 2 / 3)
CHECKPOINT_EVERY = 250    # the trainer's default; --quick checkpoints every 2 steps
STRATEGY = "ensemble"     # chunk joining for the evaluation (the best measured on this policy)
# the scripted operator's aiming error on its first reach (m, std per axis; `record --aim-noise`).
# 0: perfectly aimed demonstrations. Measured on seeds 100000-100099 (README, Fine-tuning proof):
# after both stages, 92/100 without aim noise against 79/100 with 0.02 m (one run each).
AIM_NOISE = 0.0
# the scripted operator's longest extra wait before the hand-over (s; `record --handover-delay`).
# Measured on seeds 100000-100099 after stage 1 (README, Fine-tuning proof): 90/100 with 0.5 s
# against 77/100 on time (one training run each).
HANDOVER_DELAY = 0.5


TRAIN_THREADS = max(1, min(os.cpu_count() or 1, 4))   # the trainers use the cores; the rest 1
EVAL_PROCESSES = max(1, min(os.cpu_count() or 1, 4))  # evaluation processes, a share of seeds each
EVAL_DELAY_STEPS = 2      # the policy's answer lands 2 control steps (40 ms) after its request
LEDGER = "bench.json"


def _recipe(quick: bool, demos: int, evals: int) -> dict:
    """What a bench folder was started with: a later run continues it only with the same."""
    return json.loads(json.dumps({
        "quick": quick, "demos": demos, "evals": evals, "view": VIEW, "stages": STAGES,
        "aim_noise": AIM_NOISE, "handover_delay": HANDOVER_DELAY,
        "task": TASK, "strategy": STRATEGY, "eval_seed": EVAL_SEED,
        "delay_steps": EVAL_DELAY_STEPS, "curve": CURVE}))


class _Ledger:
    """bench.json in the bench folder: the recipe, every command that finished (its wall time,
    CPU time, peak memory, and the time of the trainer's start event) and the evaluations, so a
    bench continued later adds up what the earlier ones spent and skips what they finished."""

    def __init__(self, folder: Path, recipe: dict):
        from xr0.train.rundir import write_json_atomic

        self._write = write_json_atomic
        self.path = folder / LEDGER
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            if self.data["recipe"] != recipe:
                raise ValueError(f"{folder} holds a bench of another recipe ({LEDGER}): give a "
                                 f"new folder, or run the same recipe to continue it")
            return
        entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if entries not in ([], ["store"]):
            raise ValueError(f"{folder} holds {', '.join(entries)} but no bench ({LEDGER}): give a "
                             f"new folder, one holding only store/ (its demonstrations are used), "
                             f"or the folder of an earlier bench to continue it")
        folder.mkdir(parents=True, exist_ok=True)
        self.data = {"recipe": recipe, "commands": [], "evals": {}}
        self.save()

    def save(self) -> None:
        self._write(self.path, self.data)

    def add(self, what: str, wall: float, cpu: float, rss: float, status: str,
            started: float | None = None) -> None:
        self.data["commands"].append({"what": what, "wall_s": wall, "cpu_s": cpu, "rss_mib": rss,
                                      "status": status, "started": started})
        self.save()

    def commands(self, what: str) -> list[dict]:
        return [c for c in self.data["commands"] if c["what"] == what]


def _run_logged(ledger: _Ledger, what: str, args: list[str], timeout: float,
                threads: int = 1) -> list[dict]:
    """_run, with the command's cost written to the ledger whether it finished or failed."""
    try:
        events, wall, cpu, rss = _run(args, timeout, threads)
    except CommandFailed as e:
        ledger.add(what, e.wall, e.cpu, e.rss, f"exit {e.code}", _start_time(e.events))
        raise
    ledger.add(what, wall, cpu, rss, "done", _start_time(events))
    return events


def _start_time(events: list[dict]) -> float | None:
    return next((e["time"] for e in events if e.get("event") == "start"), None)


def _recorded_seeds(store: Path) -> list[int]:
    from app.core.recorder import recorded_seed
    from store import EpisodeStore

    if not store.is_dir():
        return []
    with EpisodeStore.open(store) as st:
        return sorted(recorded_seed(st, e.id) for e in st.episodes(status="complete"))


def _record(folder: Path, ledger: _Ledger, demos: int, seconds: float | None) -> Iterator[Figure]:
    """Record the demonstrations (seeds 1 .. demos, as `record` numbers them) that the folder's
    store does not hold yet."""
    store = folder / "store"
    seeds = _recorded_seeds(store)
    if seeds != list(range(1, len(seeds) + 1)) or len(seeds) > demos:
        raise ValueError(f"{store} holds demonstrations of seeds {seeds[:3]}...{seeds[-3:]}: the "
                         f"bench trains on seeds 1-{demos}; give a new folder")
    if len(seeds) < demos:
        # stepping: every step and camera frame whatever the load on the cores
        rec = ["record", "--rig", "sim", "--task", TASK, "--episodes", str(demos - len(seeds)),
               "--seed", str(len(seeds) + 1), "--store", str(store), "--stepping"]
        if AIM_NOISE:
            rec += ["--aim-noise", str(AIM_NOISE)]
        if HANDOVER_DELAY:
            rec += ["--handover-delay", str(HANDOVER_DELAY)]
        if seconds:
            rec += ["--seconds", str(seconds)]
        _run_logged(ledger, "record", rec, timeout=4 * 3600)
    record_s = sum(c["wall_s"] for c in ledger.commands("record"))
    yield Figure("train", "demonstrations recorded", demos, "episodes", anchor=(
        "scripted sim operator, transfer cube, stepping mode, "
        + (f"aim noise {AIM_NOISE} m, " if AIM_NOISE else "")
        + (f"hand-over delay up to {HANDOVER_DELAY} s, " if HANDOVER_DELAY else "")
        + f"seeds 1-{demos}; "
        + (f"{record_s:.0f} s to record" if ledger.commands("record") else
           f"recorded before this bench into {store}")))


def _restarts(out: Path) -> list[Path]:
    """The attempts at a stage that were set aside to start it over (oldest first)."""
    return sorted(out.parent.glob(f"{out.name}.restart*"),
                  key=lambda p: int(p.name.rsplit("restart", 1)[1]))


def _stage_cost(ledger: _Ledger, what: str, out: Path) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MiB, interrupted attempts) a stage has cost so far: the
    commands the ledger saw finish, plus, for each attempt a killed bench never saw end, its
    span in the trainer's own events (start to last event; its CPU time is not known)."""
    from xr0.train.rundir import read_events

    done = ledger.commands(what)
    wall = sum(c["wall_s"] for c in done)
    cpu = sum(c["cpu_s"] for c in done)
    rss = max((c["rss_mib"] for c in done), default=0.0)
    seen = {c["started"] for c in done}
    interrupted = 0
    span: list[dict] = []
    events = [ev for d in (*_restarts(out), out) for ev in read_events(d)]
    for ev in [*events, {"event": "start", "time": None}]:
        if ev["event"] == "start":
            if span and span[0]["event"] == "start" and span[0]["time"] not in seen:
                wall += span[-1]["time"] - span[0]["time"]
                interrupted += 1
            span = []
        span.append(ev)
    return wall, cpu, rss, interrupted


def _elapsed_at(out: Path, step: int) -> float:
    """Wall seconds a stage's trainers ran until their first checkpoint at `step`, from their
    own events: every earlier attempt from its start to its last event, and the one that wrote
    the checkpoint from its start to that checkpoint (process start-up before the start events
    is not in it)."""
    from xr0.train.rundir import read_events

    total, start = 0.0, None
    for d in (*_restarts(out), out):
        prev = None
        for ev in read_events(d):
            if ev["event"] == "start":
                if start is not None and prev is not None:
                    total += prev["time"] - start
                start = ev["time"]
            elif (ev["event"] == "checkpoint" and ev["step"] == step and start is not None
                  and Path(ev["path"]).name == f"step-{step:07d}"):
                return total + ev["time"] - start
            prev = ev
        if start is not None and prev is not None:
            total += prev["time"] - start
            start = None
    raise BenchFailed(f"{out} has no checkpoint at step {step} in its events")


def _train_stage(folder: Path, ledger: _Ledger, i: int, base: str, quick: bool) -> dict:
    """Train stage i (0-based) from `base`, resuming an earlier bench's attempt from its last
    checkpoint; returns the trainer's done event."""
    from app.core.jobs import trainer_alive
    from xr0.train.rundir import RunDir, read_events

    name, steps, extra = STAGES[i]
    steps = 4 if quick else steps
    out = folder / "run" / f"stage{i + 1}"
    rd = RunDir(out)
    done = [e for e in read_events(out) if e["event"] == "done" and e["status"] == "done"
            and e["step"] == steps]
    if done:
        return done[-1]
    if rd.exists() and trainer_alive(rd.read().get("pid"), out):
        raise BenchStopped(f"stage {i + 1} ({out}) is still training in process "
                           f"{rd.read()['pid']}: wait for it or stop it, then run the bench again")
    resume = rd.exists() and rd.last_checkpoint() is not None
    if out.exists() and not resume:
        # an attempt that died before its first checkpoint: kept aside (its time still counts),
        # and the stage starts over
        out.rename(out.with_name(f"{out.name}.restart{len(_restarts(out)) + 1}"))
    train = ["train", "--store", str(folder / "store"), "--base", base,
             "--preset", "tiny-scratch", "--out", str(out), "--val-episodes",
             "1" if quick else "2", "--keep-checkpoints", "0", "--steps", str(steps),
             "--checkpoint-every", str(2 if quick else CHECKPOINT_EVERY), *VIEW, *extra]
    if quick:
        train += ["--val-every", str(steps)]
    if resume:
        train.append("--resume")
    try:
        events = _run_logged(ledger, f"stage{i + 1}", train, timeout=6 * 3600,
                             threads=TRAIN_THREADS)
    except CommandFailed as e:
        from xr0.train.trainer import EXIT_CANCELLED   # stopped with a checkpoint

        if e.code != EXIT_CANCELLED:
            raise
        step = next((ev["step"] for ev in e.events if ev["event"] == "done"), "?")
        raise BenchStopped(f"stage {i + 1} ('{name}') was stopped at step {step} with a "
                           f"checkpoint: run the bench again with XR0_BENCH_TRAIN_DIR={folder} "
                           f"to continue") from None
    return next(e for e in events if e["event"] == "done")


def _evaluate(ledger: _Ledger, name: str, checkpoint: str, episodes: int) -> dict:
    """Success of `checkpoint` over seeds EVAL_SEED .. EVAL_SEED + episodes - 1, split into one
    `main.py run` process per core (each episode is deterministic given its seed, so the split
    changes nothing but the wall time)."""
    from concurrent.futures import ThreadPoolExecutor

    parts = max(1, min(episodes, EVAL_PROCESSES))
    bounds = [EVAL_SEED + episodes * i // parts for i in range(parts + 1)]
    t0 = time.monotonic()

    def one(i: int):
        return _run(["run", "--rig", "sim", "--policy", checkpoint, "--task", TASK, "--episodes",
                     str(bounds[i + 1] - bounds[i]), "--seed", str(bounds[i]), "--strategy",
                     STRATEGY, "--inject-delay-steps", str(EVAL_DELAY_STEPS)], 6 * 3600)

    with ThreadPoolExecutor(parts) as pool:
        futures = [pool.submit(one, i) for i in range(parts)]
    rows = []
    for i, fut in enumerate(futures):
        try:
            events, wall, cpu, rss = fut.result()
        except CommandFailed as e:
            ledger.add(f"eval {name} ({i + 1}/{parts})", e.wall, e.cpu, e.rss, f"exit {e.code}")
            raise
        ledger.add(f"eval {name} ({i + 1}/{parts})", wall, cpu, rss, "done")
        rows += [e for e in events if e["event"] == "episode"]
    if len(rows) != episodes:
        raise BenchFailed(f"evaluation of {checkpoint} reported {len(rows)} of {episodes} "
                          f"episodes; nothing was recorded for it: run the bench again to redo it")
    reached = [r["max_reward"] for r in rows if r.get("max_reward") is not None]
    return {"success_rate": sum(r["success"] for r in rows) / len(rows),
            "stages": {str(s): reached.count(s) for s in sorted(set(reached))},
            "eval_s": round(time.monotonic() - t0, 1), "processes": parts}


def run(quick: bool = False) -> Iterator[Figure]:
    from bench import train_gpu

    keep = os.environ.get("XR0_BENCH_TRAIN_DIR")  # keep the store and runs there
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        yield from _bench(Path(keep) if keep else Path(tmp) / "bench", quick)
    yield from train_gpu.run(quick)     # the xr0-4.7b presets, where a GPU is present


def _bench(folder: Path, quick: bool) -> Iterator[Figure]:
    from xr0.train.rundir import read_events

    demos, seconds = (3, 3.0) if quick else (150, None)
    evals = 2 if quick else 50
    ledger = _Ledger(folder, _recipe(quick, demos, evals))
    yield from _record(folder, ledger, demos, seconds)

    base, stage_ends, events = "xr0-tiny", [], []
    train_s = train_cpu_s = rss = 0.0
    interrupted = 0
    for i, (name, _, _) in enumerate(STAGES):
        done = _train_stage(folder, ledger, i, base, quick)
        out = folder / "run" / f"stage{i + 1}"
        wall, cpu, peak, lost = _stage_cost(ledger, f"stage{i + 1}", out)
        train_s, train_cpu_s, rss = train_s + wall, train_cpu_s + cpu, max(rss, peak)
        interrupted += lost
        events += [{**e, "_stage": name} for e in read_events(out)]
        base = done["checkpoint"]
        stage_ends.append((name, done, train_s, train_cpu_s))
    step_events = [e for e in events if e["event"] == "step"]
    start = next(e for e in events if e["event"] == "start")
    vals = [e for e in events if e["event"] == "val"]
    total_steps = sum(d["step"] for _, d, _, _ in stage_ends)
    detail = {"steps": total_steps, "stages": [n for n, _, _, _ in stage_ends],
              "samples": start["samples"], "trainable_parameters": start["trainable_parameters"],
              "first_loss": step_events[0]["loss"], "last_loss": step_events[-1]["loss"],
              "interrupted_attempts": interrupted, "folder": str(folder),
              "val": [{k: v[k] for k in ("_stage", "step", "val_loss", "action_error")}
                      for v in vals]}
    sps = [e["samples_per_s"] for e in step_events[-50:]]
    yield Figure("train", "tiny-scratch training throughput", sum(sps) / len(sps),
                 "samples/s", goal="trains the sim task in minutes to an hour on a CPU",
                 anchor=f"xr0-tiny, {' '.join(VIEW)}, batch 16, k_draws 4, {TRAIN_THREADS} "
                        "thread(s); mean of the last 50 step events", detail=detail)
    yield Figure("train", "tiny-scratch peak RSS", rss, "MiB",
                 anchor="the training processes' own peak resident memory (largest stage)")
    yield Figure("train", "tiny-scratch training time", train_s, "s",
                 anchor=f"{len(STAGES)} stage{'s' if len(STAGES) > 1 else ''}, {total_steps} "
                        "steps, start-up and validation included"
                        + (f"; {interrupted} attempt(s) cut short by a stopped bench and "
                           "resumed from their last checkpoint, counted from their trainers' "
                           "events" if interrupted else ""))
    yield Figure("train", "tiny-scratch training CPU time", train_cpu_s, "CPU s",
                 anchor="user + system time of the trainers and their data workers"
                        + (f"; without the {interrupted} attempt(s) cut short, whose CPU time "
                           "is not known" if interrupted else ""))

    # success against training time: checkpoints through the last stage, and each stage's end
    last_steps = stage_ends[-1][1]["step"]
    every = 2 if quick else CHECKPOINT_EVERY
    points = [(k, d["step"], at_s, at_cpu) for k, (_, d, at_s, at_cpu) in enumerate(stage_ends)]
    before_s = stage_ends[-2][2] if len(stage_ends) > 1 else 0.0
    last_out = folder / "run" / f"stage{len(stage_ends)}"
    for f in CURVE:
        step = int(last_steps * f) // every * every
        if 0 < step < last_steps and all(p[:2] != (len(stage_ends) - 1, step) for p in points):
            points.append((len(stage_ends) - 1, step, before_s + _elapsed_at(last_out, step),
                           None))
    points.sort(key=lambda p: (p[0], p[1]))
    curve = []
    for k, step, at_s, at_cpu in points:
        name = STAGES[k][0]
        last = (k, step) == (len(stage_ends) - 1, last_steps)
        checkpoint = (stage_ends[k][1]["checkpoint"] if step == stage_ends[k][1]["step"] else
                      str(folder / "run" / f"stage{k + 1}" / "checkpoints" / f"step-{step:07d}"))
        key = f"{name} @ {step}"
        result = ledger.data["evals"].get(key)
        if result is None:
            result = _evaluate(ledger, key, checkpoint, evals)
            ledger.data["evals"][key] = result
            ledger.save()
        curve.append({"stage": name, "step": step, "training_s": round(at_s, 1),
                      "cpu_s": None if at_cpu is None else round(at_cpu, 1),
                      "success_rate": result["success_rate"], "stages": result["stages"],
                      "eval_s": result["eval_s"]})
        cost = (f"{at_s:.0f} s" if at_cpu is None else f"{at_s:.0f} s ({at_cpu:.0f} CPU s)")
        yield Figure("train", f"success rate after stage '{name}', step {step}",
                     result["success_rate"], "fraction",
                     goal=">= 0.8 (ACT: 0.86 with 50 scripted demos)" if last else
                     "rises with training time",
                     met=(result["success_rate"] >= 0.8) if last and not quick else None,
                     anchor=(f"{evals} seeded sim episodes never seen in training (seeds "
                             f"{EVAL_SEED}+, --strategy {STRATEGY}, answers "
                             f"{EVAL_DELAY_STEPS} steps after each request), after {cost} of "
                             f"training on {demos} demonstrations; eval took "
                             f"{result['eval_s']:.0f} s"),
                     detail={"training_s": at_s, "cpu_s": at_cpu, "episodes": evals,
                             "checkpoint": checkpoint, "curve": list(curve)})
