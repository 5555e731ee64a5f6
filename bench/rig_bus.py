"""Teleop cycles per second on emulated Dynamixel buses at 1 Mbps wire time.

An ALOHA rig has each arm on its own bus. One teleop cycle reads both leaders and both followers
(a 7-servo sync read of Present_Position each) and writes both followers (a 7-servo sync write of
Goal_Position each), through HardwareRig: the real dynamixel-sdk, the real unit conversions and
clamps. Wire time at 1 Mbps: 126 bytes (1.26 ms) per sync read, 49 bytes (0.49 ms) per sync write,
so ~6 ms per cycle with the buses one after another (~165 cycles/s) and ~1.75 ms with them in
parallel, one thread per bus (~570 cycles/s), before any software overhead.

Each emulated bus runs in its own process, as each real bus is its own USB adapter: in-process
emulators would share the benchmark's GIL with the driver threads and measure that contention
instead of the driver.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from bench import Figure

ANCHOR = "LeRobot docs: 5-6 ms per arm read"
GOAL_CYCLES = 250.0
BENCH = "rig"


def _cycles(rig, n: int) -> tuple[float, np.ndarray]:
    """Run n teleop cycles (read all four arms, command the followers); returns cycles/s and
    the per-cycle durations."""
    q = rig.read().follower
    durations = np.empty(n)
    t_start = time.perf_counter()
    for k in range(n):
        t0 = time.perf_counter()
        state = rig.read()
        target = state.leader if state.leader is not None else q
        rig.command(np.clip(target, *rig.limits()))
        durations[k] = time.perf_counter() - t0
    return n / (time.perf_counter() - t_start), durations


def _read_latencies(rig) -> np.ndarray:
    return np.concatenate([a.bus.latency.values() for a in rig.arms])


def teleop_cycles(quick: bool) -> list[Figure]:
    from drivers.config import load_rig_config
    from drivers.dynamixel.emulator import EmulatedRig
    from drivers.hardware import HardwareRig

    n = 150 if quick else 1500
    config = load_rig_config("aloha")
    figures: list[Figure] = []
    results = {}
    latencies = []
    with tempfile.TemporaryDirectory() as tmp, EmulatedRig(config, tmp, processes=True) as er:
        for mode, parallel in (("sequential", False), ("parallel", True)):
            with HardwareRig(er.config, parallel=parallel) as rig:
                _cycles(rig, max(10, n // 10))  # warm-up
                for a in rig.arms:
                    a.bus.latency.reset()
                rate, durations = _cycles(rig, n)
                results[mode] = (rate, durations)
                latencies.append(_read_latencies(rig))
    wire_cycle_ms = {"sequential": 4 * 1.26 + 2 * 0.49, "parallel": 1.26 + 0.49}
    for mode, (rate, durations) in results.items():
        figures.append(Figure(
            bench=BENCH, name=f"teleop_cycles_{mode}", value=round(rate, 1), unit="cycles/s",
            goal=f">= {GOAL_CYCLES:.0f}" if mode == "parallel" else "",
            anchor=ANCHOR, met=(rate >= GOAL_CYCLES) if mode == "parallel" else None,
            detail={"cycles": n, "buses": 4, "servos_per_bus": 7, "baud": 1_000_000,
                    "cycle_p50_ms": round(float(np.percentile(durations, 50)) * 1e3, 3),
                    "cycle_p99_ms": round(float(np.percentile(durations, 99)) * 1e3, 3),
                    "wire_time_cycle_ms": wire_cycle_ms[mode],
                    "wire_limit_cycles_s": round(1e3 / wire_cycle_ms[mode], 1)}))
    lat = np.concatenate(latencies) * 1e3
    for q in (50, 99):
        figures.append(Figure(
            bench=BENCH, name=f"arm_read_latency_p{q}",
            value=round(float(np.percentile(lat, q)), 3),
            unit="ms", goal="<= 5" if q == 50 else "", anchor=ANCHOR,
            met=bool(np.percentile(lat, q) <= 5.0) if q == 50 else None,
            detail={"reads": int(lat.size), "what": "one 7-servo sync read of Present_Position "
                    "at 1 Mbps, retries included", "wire_time_ms": 1.26}))
    return figures


if __name__ == "__main__":
    from app.cli.output import emit_json

    for fig in teleop_cycles(quick=True):
        emit_json(fig.as_dict())
