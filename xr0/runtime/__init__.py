"""The real-time asynchronous execution runtime: action chunks from a policy, spliced into one
smooth command stream at the control rate while the next chunk is being computed.

    control thread: runtime.step(state, t, observe) once per tick -> the action for this tick
    inference worker: policy.infer(observation, clean prefix) -> the next chunk (H, D)

Rig-agnostic (D-dim actions at a control period dt); the app adapts a rig to it. No Qt, no drivers.
"""

from xr0.runtime.policy import ChunkPolicy, Observation
from xr0.runtime.runtime import ChunkRuntime, DelayTooLarge, RuntimeConfig, RuntimeStep
from xr0.runtime.strategies import STRATEGIES
from xr0.runtime.telemetry import Flag, RunLog, Telemetry, load_run

__all__ = [
    "ChunkPolicy", "Observation", "ChunkRuntime", "RuntimeConfig", "RuntimeStep", "DelayTooLarge",
    "STRATEGIES", "Flag", "Telemetry", "RunLog", "load_run",
]
