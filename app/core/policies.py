"""Where a chunk policy comes from, for every way of running autonomy (the app's Autonomy tab,
`main.py run`): an XR0 checkpoint loaded in this process or in a local policy server process of
its own (app.core.policy_process), or a policy server at tcp://HOST:PORT, and which rig cameras it
sees. Mismatches (joint layout, cameras) are refused here, before the
rig moves."""

from __future__ import annotations

from pathlib import Path


def load_chunk_policy(spec: str, token: str | None = None, instruction: str = "", *,
                      process: bool = False):
    """The ChunkPolicy behind a policy spec: a checkpoint folder (XR0 in this process, or with
    process=True in a local policy server started for it: a LocalPolicy whose shutdown() stops
    that server) or tcp://HOST:PORT (a policy server, with its shared token).

    A process of its own suits a process that is busy besides (the app: GUI, control loop,
    physics): there the model's thousands of small torch ops wait on the GIL and its threads on
    the cores. Stepping runs, which wait for each chunk anyway, keep it in this process."""
    from drivers import layout

    if spec.startswith("tcp://"):
        from xr0.serve import RemotePolicy, parse_address

        host, port = parse_address(spec)
        try:
            return RemotePolicy(host, port, token=token, joint_names=list(layout.NAMES))
        except (ConnectionError, TimeoutError) as e:
            raise ValueError(f"policy server {spec}: {e}") from e
    if not Path(spec).is_dir():
        raise ValueError(f"--policy {spec}: no such checkpoint folder; give 'scripted', a "
                         f"checkpoint folder (from `main.py train`) or tcp://HOST:PORT")
    if process:
        from app.core.policy_process import serve_checkpoint

        return serve_checkpoint(spec, instruction, joint_names=list(layout.NAMES))
    from xr0.policy import XR0Policy

    policy = XR0Policy.from_checkpoint(spec)
    if policy.state_dim != layout.DIM or policy.action_dim != layout.DIM:
        raise ValueError(f"the checkpoint's policy acts on {policy.action_dim} joints, the rig has "
                         f"{layout.DIM} ({', '.join(layout.NAMES)}): train it on this rig's "
                         f"episodes")
    return policy.as_chunk_policy(instruction)


def policy_cameras(cfg, policy) -> tuple:
    """The rig cameras a policy sees: none for the scripted policy (None; it plans from the sim
    state), else the policy's cameras, which the rig must have."""
    if policy is None:
        return ()
    names = (getattr(policy, "cameras", None)                      # a policy in this process
             or getattr(getattr(policy, "policy", None), "cameras", None)  # XR0ChunkPolicy
             or getattr(policy, "meta", {}).get("cameras") or ())        # a policy server
    have = {c.name: c for c in cfg.cameras}
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"the policy needs cameras {missing} that rig {cfg.name!r} does not have "
                         f"(it has {sorted(have)}): use the rig the policy was trained on")
    return tuple(have[n] for n in names)
