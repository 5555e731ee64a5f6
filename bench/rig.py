"""`python main.py bench rig`: the rig layer's figures.

- teleop cycles/s on emulated Dynamixel buses at 1 Mbps (bench.rig_bus)
- control-loop period error at 50 Hz with four arms and two cameras active, and on the sim rig
  with its three cameras (bench.rig_loop)
- sim real-time factor with two cameras at 240x320 on 2 cores (bench.rig_sim)
- the scripted operator's success through the teleop path (bench.rig_operator)
"""

from __future__ import annotations

from collections.abc import Iterator

from bench import Figure


def run(quick: bool = False) -> Iterator[Figure]:
    from bench.rig_bus import teleop_cycles
    from bench.rig_loop import loop_period_error, sim_loop_period_error
    from bench.rig_operator import operator_success
    from bench.rig_sim import sim_rtf

    yield from teleop_cycles(quick)
    yield from loop_period_error(quick)
    yield from sim_loop_period_error(quick)
    yield from sim_rtf(quick)
    yield from operator_success(quick)
