"""The scripted operator's success through the real teleop path (Teleop + SafetyFilter with the
sim rig's safety config), seeded episodes in stepping mode: the demonstrations the sim records."""

from __future__ import annotations

import time

from bench import Figure

BENCH = "rig"


def operator_success(quick: bool) -> list[Figure]:
    from drivers.config import load_rig_config
    from drivers.sim.scripted_teleop import run_episodes

    n = 5 if quick else 20
    figures = []
    for task, goal in (("transfer_cube", 0.95), ("insertion", None)):
        t0 = time.monotonic()
        results = run_episodes(load_rig_config("sim"), task, range(n))
        rate = sum(r["success"] for r in results.values()) / n
        figures.append(Figure(
            bench=BENCH, name=f"operator_success_{task}", value=round(rate, 3), unit="fraction",
            goal=f">= {goal} of {n} seeded episodes" if goal else "",
            anchor="ACT's scripted demonstrations (the source of its 50-demo results)",
            met=(rate >= goal) if goal else None,
            detail={"seeds": f"0..{n - 1}", "successes": sum(r["success"] for r in results.values()),
                    "teleop_stops": sum(bool(r["stopped"]) for r in results.values()),
                    "max_leader_joint_step_rad": round(max(r["joint_step"] for r in results.values()), 4),
                    "wall_s": round(time.monotonic() - t0, 1)}))
    return figures
