"""The asynchronous runtime on the sim transfer-cube task.

Strategies compared on the same seeds with the scripted-chunk policy (H = 50 at 50 Hz, k = 15) and
an injected inference delay d of 0, 2, 4 and 8 control steps (stepping mode, deterministic): task
success rate, boundary discontinuity (|action at a chunk switch - action before| / median
within-chunk step, mean over switches and episodes) and RMS jerk of the commanded trajectory.
`rtc` needs a flow policy (infer_guided); the scripted planner is deterministic, so it is left out
here (tests/test_runtime_rtc.py measures it on a flow field).

With XR0_BENCH_RUNTIME_POLICY=CHECKPOINT (an xr0-tiny fine-tuned on sim transfer-cube demos, e.g.
the run `main.py bench train` keeps with XR0_BENCH_TRAIN_DIR), the same comparison with that
trained policy on evaluation seeds no demonstration used (100000+), rtc included (a flow policy
has infer_guided), the delay injected in steps as above.

Then real time: RigSession's control thread at 50 Hz on the sim rig with one camera, the
scripted-chunk policy computing in the inference worker with 80 ms injected latency (XR0 on an
RTX 4090), and the control loop's period error p99 measured while inference runs.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from bench import Figure

ANCHOR_SMOOTH = ("RTC (arXiv 2506.07339): synchronous execution degrades with delay, async with "
                 "inpainting does not; XR0: k = 10 of T = 30, clean prefix")
ANCHOR_LOOP = "ALOHA: 50 Hz control; XR0 inference 80 ms on an RTX 4090 (~2.4 steps at 30 Hz)"
STRATEGIES = ("xr0", "sync", "naive", "ensemble", "aggregate")
DELAYS = (0, 2, 4, 8)


def _sim(realtime: bool, cameras: int = 0):
    from drivers.config import SimConfig, load_rig_config

    cfg = load_rig_config("sim")
    cams = tuple(dataclasses.replace(c, width=240, height=180, fps=15)
                 for c in cfg.cameras[:cameras])
    sim = dataclasses.replace(cfg.sim or SimConfig(), realtime=realtime, task="transfer_cube")
    return cfg.with_(cameras=cams, sim=sim)


def strategies(quick: bool) -> list[Figure]:
    import torch

    from app.core.autonomy import run_sim_episode
    from drivers.sim.rig import SimRig

    torch.set_num_threads(1)
    seeds = range(2) if quick else range(5)
    figs = []
    with SimRig(_sim(False)) as rig:
        for d in DELAYS:
            for s in STRATEGIES:
                rows = [run_sim_episode(rig, s, seed, d) for seed in seeds]
                success = sum(r["success"] for r in rows) / len(rows)
                bd = float(np.nanmean([r["boundary_discontinuity"] for r in rows]))
                jerk = float(np.mean([r["rms_jerk"] for r in rows]))
                done = [r["completion_s"] for r in rows if r["completion_s"] is not None]
                detail = {"seeds": list(seeds), "delay_steps": d,
                          "boundary_discontinuity_max": float(np.nanmax(
                              [r["boundary_discontinuity_max"] for r in rows])),
                          "completion_s_mean": float(np.mean(done)) if done else None,
                          "flags": sorted({f for r in rows for f in r["flags"]})}
                figs.append(Figure("runtime", f"{s} d={d} success rate", success, "fraction",
                                   anchor=ANCHOR_SMOOTH, detail=detail))
                goal = "<= 1.5" if s == "xr0" else ""
                figs.append(Figure("runtime", f"{s} d={d} boundary discontinuity", bd,
                                   "x median step", goal, ANCHOR_SMOOTH,
                                   (bd <= 1.5) if s == "xr0" else None, detail))
                figs.append(Figure("runtime", f"{s} d={d} RMS jerk", jerk, "rad/s^3",
                                   anchor=ANCHOR_SMOOTH, detail=detail))
    return figs


def trained(checkpoint: str, quick: bool):
    """The strategies with a trained XR0 policy (stepping mode, injected delay in steps)."""
    import torch

    from app.core.autonomy import run_sim_episode
    from app.core.policies import load_chunk_policy, policy_cameras
    from drivers.config import load_rig_config
    from drivers.sim.rig import SimRig

    torch.set_num_threads(1)
    task = "transfer the cube"
    policy = load_chunk_policy(checkpoint, instruction=task)
    # the cameras the policy was trained with, as the sim rig config has them
    full = _sim(False).with_(cameras=policy_cameras(load_rig_config("sim"), policy))
    seeds = range(100_000, 100_002 if quick else 100_010)
    delays = (0, 4) if quick else DELAYS
    with SimRig(full) as rig:
        for d in delays:
            for s in (*STRATEGIES, "rtc"):
                rows = [run_sim_episode(rig, s, seed, d, instruction=task, policy=policy)
                        for seed in seeds]
                success = sum(r["success"] for r in rows) / len(rows)
                bd = float(np.nanmean([r["boundary_discontinuity"] for r in rows]))
                jerk = float(np.mean([r["rms_jerk"] for r in rows]))
                detail = {"seeds": [seeds.start, seeds.stop - 1], "delay_steps": d,
                          "checkpoint": checkpoint,
                          "latency_ms_p50": float(np.median([r["latency_ms_p50"] for r in rows])),
                          "flags": sorted({f for r in rows for f in r["flags"]})}
                anchor = "trained xr0-tiny; " + ANCHOR_SMOOTH
                yield Figure("runtime", f"trained {s} d={d} success rate", success, "fraction",
                             anchor=anchor, detail=detail)
                yield Figure("runtime", f"trained {s} d={d} boundary discontinuity", bd,
                             "x median step", "<= 1.5" if s == "xr0" else "", anchor,
                             (bd <= 1.5) if s == "xr0" else None, detail)
                yield Figure("runtime", f"trained {s} d={d} RMS jerk", jerk, "rad/s^3",
                             anchor=anchor, detail=detail)


def realtime_loop(quick: bool) -> list[Figure]:
    import torch

    from app.core.autonomy import AutonomySource, AutonomyState
    from app.core.rig_session import RigSession
    from app.core.scripted_policy import ScriptedChunkPolicy
    from xr0.runtime import ChunkRuntime, RuntimeConfig

    torch.set_num_threads(1)
    seconds = 3.0 if quick else 7.0
    session = RigSession(_sim(True, cameras=1))
    with session:
        rig = session.rig
        policy = ScriptedChunkPolicy(rig, chunk_length=50, latency_s=0.08)
        rt = ChunkRuntime(policy, RuntimeConfig(dt=rig.dt, k=15))
        src = AutonomySource(rig, rt, extra=policy.capture)
        session.set_source(src)
        t_end = time.monotonic() + 10
        while src.state is not AutonomyState.RUNNING and time.monotonic() < t_end:
            time.sleep(0.02)
        n0 = session.period_error.count  # measure from here: the policy is running
        time.sleep(seconds)
        st = session.status()
        late = session.period_error.values()[-(session.period_error.count - n0):] * 1e3
        success = bool(session.latest().state.info.get("success"))
        lat = rt.telemetry.latencies_ms()
        snap = rt.telemetry.snapshot()
        session.set_source(None)
        rt.stop()
    p99 = float(np.percentile(late, 99)) if len(late) else None
    detail = {"ticks": len(late), "period_error_ms_max": float(late.max()) if len(late) else None,
              "cycle_ms": st.cycle_ms,
              "missed_ticks": st.missed_ticks, "seconds": seconds, "chunks": len(lat),
              "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
              "starved_steps": int(((snap["step_flags"] & 2) != 0).sum()),
              "task_success_so_far": success, "control_priority": session.priority}
    return [Figure("runtime", "control-loop period error p99 with inference running", p99, "ms",
                   "<= 1 ms at 50 Hz", ANCHOR_LOOP, None if p99 is None else p99 <= 1.0, detail)]


def run(quick: bool = False):
    import os

    yield from strategies(quick)
    if os.environ.get("XR0_BENCH_RUNTIME_POLICY"):
        yield from trained(os.environ["XR0_BENCH_RUNTIME_POLICY"], quick)
    yield from realtime_loop(quick)
