"""Where did the grasping gripper go? For each transfer-cube episode saved by
`main.py run --rig sim --save DIR` (stepping mode: episode_SEED.npz + .json), the right fingertip's
path from the follower's measured joints (forward kinematics on the sim model) against the cube's
resting position (placed from the episode's seed as the sim places it, then settled).

    .venv/bin/python main.py run --rig sim --policy CKPT --task "transfer the cube" \\
        --episodes 20 --seed 100000 --save runs/eval
    .venv/bin/python scripts/grasp_error.py runs/eval

Per episode: the closest the fingertip came to the cube and at which step, the step at which the
right gripper began to close after opening, and the fingertip minus cube offset (cm, x y z in the
world frame) at that step. A policy that reads the scene closes near 0 offset; one that misses
shows whether it falls short (x), aims to a side (y) or closes too high or too early (z, step).

The hand-over: the step at which the left fingertip came in past x = ARRIVE_X (towards the right
arm holding the cube out), the step at which the left gripper began to close (the same rule),
the left fingertip's x and the distance (cm) between the two arms' fingertips then, the step at
which the right gripper began to open again after its grasp (rising OPENING_RISE above its
lowest since), and the release gap between the two (steps). The scripted operator lets go 41-42 steps (0.8 s) after the left gripper begins
to close, its fingertips 1.8 cm apart; a right gripper that opens much sooner drops the cube
before the left one holds it. A left gripper that closes on the clock instead of on the arm's
arrival closes fewer steps after it comes in, and short of the cube when it comes in late.

With `--store DIR` it reports the same hand-over figures for the complete episodes of a store
(the demonstrations a policy learned from), to set a policy's against:

    .venv/bin/python scripts/grasp_error.py --store stores/demo

Over the episodes: the localisation gain along x and y, the slope of a least-squares line
through (where the cube lay, where the fingertip closed). A policy that follows the cube has a
gain near 1; one that reaches for where the cube usually is has a gain near 0, and its misses
grow with the cube's distance from the middle of its range. The residual (cm) is the scatter
about that line.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPEN_ABOVE = 0.8     # normalised gripper opening (0 closed .. 1 open) that counts as opened
CLOSING_DROP = 0.1   # a fall this far below the widest opening so far counts as closing
OPENING_RISE = 0.2   # a rise this far above the lowest opening since the grasp counts as opening
ARRIVE_X = 0.06      # m: the left fingertip past this x is coming in for the hand-over


@functools.cache
def _model():
    """The transfer-cube scene, compiled once (cameras at a token size: nothing is rendered)."""
    from drivers.sim.scene import build_model

    return build_model("transfer_cube", 64, 48)


def fingertip_path(states: np.ndarray, side: str = "right") -> np.ndarray:
    """(T, 3) world positions of the point between the fingertips of one arm, from (T, 14)
    follower states."""
    import mujoco

    from drivers import layout
    from drivers.sim.operator import TIP
    from drivers.sim.scene import SceneIndex

    model = _model()
    data = mujoco.MjData(model)
    arm = SceneIndex.of(model).arms[side]
    s = layout.arm_slice(side)
    out = np.empty((len(states), 3))
    for i, q in enumerate(states):
        data.qpos[list(arm.qpos)] = q[s.start:s.start + 6]
        mujoco.mj_kinematics(model, data)
        rot = data.xmat[arm.gripper_body].reshape(3, 3)
        out[i] = data.xpos[arm.gripper_body] + rot @ TIP
    return out


def cube_at_rest(seed: int) -> np.ndarray:
    """The cube's centre once it has settled on the table: the episode's start (arms at the start
    pose, the cube where the seed places it) stepped 1 s of physics."""
    import mujoco

    from drivers.sim.tasks import TASKS

    model = _model()
    data = mujoco.MjData(model)
    TASKS["transfer_cube"].reset(model, data, seed)
    for _ in range(int(1.0 / model.opt.timestep)):
        mujoco.mj_step(model, data)
    return data.qpos[16:19].copy()


def gripper(side: str) -> int:
    """The column of one arm's gripper in the 14-d state and action vectors."""
    from drivers import layout

    return layout.NAMES.index(f"{side}_gripper")


def closing_step(g: np.ndarray) -> int | None:
    """The first step at which a gripper that was opened falls well below its widest opening so
    far (on a grasped cube it stops part-way, so a fixed "closed" threshold would miss it)."""
    widest = np.maximum.accumulate(g)
    closing = np.flatnonzero((widest >= OPEN_ABOVE) & (g < widest - CLOSING_DROP))
    return int(closing[0]) if len(closing) else None


def opening_step(g: np.ndarray, after: int) -> int | None:
    """The first step after `after` at which the gripper rises well above its lowest since."""
    lowest = np.minimum.accumulate(g[after:])
    opening = np.flatnonzero(g[after:] > lowest + OPENING_RISE)
    return after + int(opening[0]) if len(opening) else None


def handover(states: np.ndarray, right_close: int | None) -> dict:
    """When the left gripper closed, how far apart the fingertips were then, when the right one
    let go, and the gap between the two."""
    left_close = closing_step(states[:, gripper("left")])
    right_open = None if right_close is None else opening_step(
        states[:, gripper("right")], right_close)
    tips = left_x = None
    left_tips = fingertip_path(states, "left")
    start = right_close or 0
    came = np.flatnonzero(left_tips[start:, 0] >= ARRIVE_X)
    if left_close is not None:
        at = states[left_close:left_close + 1]
        tips = float(np.linalg.norm(left_tips[left_close] - fingertip_path(at, "right")[0]) * 100)
        left_x = float(left_tips[left_close, 0] * 100)
    return {"left_arrive_step": start + int(came[0]) if len(came) else None,
            "left_close_step": left_close, "left_x_cm": left_x,
            "tips_cm": tips, "right_open_step": right_open,
            "release_gap": None if left_close is None or right_open is None
            else right_open - left_close}


def release_chunk(z, right_close: int | None, before: int = 4) -> dict | None:
    """Which chunk commanded the right gripper's release (the commanded opening rising
    OPENING_RISE above its lowest since the grasp): its request step, and where the `before`
    chunks requested before it had planned that release (None: not within their plan)."""
    g = gripper("right")
    if right_close is None:
        return None
    step = opening_step(z["step_action"][:, g], right_close)
    if step is None or int(z["step_chunk"][step]) < 0:
        return None
    ids = [int(c) for c in z["chunk_id"]]
    k = ids.index(int(z["step_chunk"][step]))
    planned = []
    for j in range(max(0, k - before), k):
        r = int(z["chunk_request"][j])
        at = max(right_close - r, 0)
        o = opening_step(z["chunk_actions"][j][:, g], at) if at < z["chunk_actions"].shape[1] else None
        planned.append(None if o is None else r + o)
    return {"step": step, "request": int(z["chunk_request"][k]), "earlier_plans": planned}


def grasp_error(npz: Path) -> dict:
    """The figures of one saved episode."""
    meta = json.loads(npz.with_suffix(".json").read_text())["meta"]
    if meta.get("task") != "transfer_cube":
        raise ValueError(f"{npz.name}: task {meta.get('task')!r}, not transfer_cube")
    z = np.load(npz)
    states = z["step_state"]
    cube = cube_at_rest(int(meta["seed"]))
    tips = fingertip_path(states)
    dist = np.linalg.norm(tips - cube, axis=1)
    close = closing_step(states[:, gripper("right")])
    return {"seed": int(meta["seed"]), "success": bool(meta.get("success")),
            "cube_cm": [float(v) for v in cube * 100],
            "closest_cm": float(dist.min() * 100), "closest_step": int(dist.argmin()),
            "close_step": close,
            "offset_cm": None if close is None else [float(v) for v in (tips[close] - cube) * 100],
            "handover": handover(states, close), "release": release_chunk(z, close)}


def localisation_gain(rows: list[dict]) -> dict | None:
    """Per horizontal axis, the slope and residual std (cm) of fingertip-at-closing on the
    cube's position over the episodes that closed; None with fewer than 3 of them."""
    closed = [r for r in rows if r["offset_cm"] is not None]
    if len(closed) < 3:
        return None
    cube = np.array([r["cube_cm"] for r in closed])
    tip = cube + np.array([r["offset_cm"] for r in closed])
    out = {}
    for k, axis in enumerate("xy"):
        slope, icpt = np.polyfit(cube[:, k], tip[:, k], 1)
        resid = tip[:, k] - (slope * cube[:, k] + icpt)
        out[axis] = {"gain": float(slope), "residual_cm": float(resid.std()),
                     "cube_std_cm": float(cube[:, k].std())}
    return out


def arrival_summary(handovers: list[dict]) -> str | None:
    """Medians of when the left arm came in and when its gripper began to close."""
    both = [h for h in handovers
            if h["left_arrive_step"] is not None and h["left_close_step"] is not None]
    if not both:
        return None
    med = lambda key: float(np.median([h[key] for h in both]))  # noqa: E731
    lag = float(np.median([h["left_close_step"] - h["left_arrive_step"] for h in both]))
    return (f"left fingertip past x = {ARRIVE_X * 100:.0f} cm at step {med('left_arrive_step'):.0f}, "
            f"closing at step {med('left_close_step'):.0f} ({lag:.0f} steps later), its x then "
            f"{med('left_x_cm'):.1f} cm, the fingertips {med('tips_cm'):.1f} cm apart (medians)")


def store_handovers(root: str) -> list[dict]:
    """The hand-over figures of each complete episode of a store, by episode id."""
    from store import EpisodeStore
    from store.db import INDEX

    if not (Path(root) / INDEX).is_file():   # opening would make a new, empty store there
        raise FileNotFoundError(f"no episode store at {root} (no {INDEX}): give the folder "
                                "`main.py record --store` wrote")
    out = []
    with EpisodeStore.open(root) as st:
        for info in st.episodes(status="complete"):
            states = np.asarray(st.episode(info.id).state, dtype=np.float64)
            h = handover(states, closing_step(states[:, gripper("right")]))
            out.append({"episode": info.id, "handover": h})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", help="a `main.py run --save` folder")
    ap.add_argument("--store", help="instead: the hand-over of a store's complete episodes")
    ap.add_argument("--json", action="store_true", help="one JSON line per episode")
    args = ap.parse_args()
    if (args.folder is None) == (args.store is None):
        ap.error("give a `main.py run --save` folder or --store DIR")
    if args.store is not None:
        try:
            rows = store_handovers(args.store)
        except FileNotFoundError as e:
            print(e, file=sys.stderr)
            return 2
        if args.json:
            for r in rows:
                print(json.dumps(r))
        else:
            line = arrival_summary([r["handover"] for r in rows])
            print(f"{len(rows)} episodes: " + (line or "no hand-over"))
        return 0
    files = sorted(Path(args.folder).glob("episode_*.npz"))
    if not files:
        print(f"no episode_*.npz in {args.folder}: save a stepping run there with "
              "`main.py run --rig sim ... --save FOLDER`", file=sys.stderr)
        return 2
    rows = [grasp_error(f) for f in files]
    for r in rows:
        if args.json:
            print(json.dumps(r))
            continue
        off = ("never closed" if r["offset_cm"] is None else
               "closed at step {} with offset x {:+.1f} y {:+.1f} z {:+.1f} cm".format(
                   r["close_step"], *r["offset_cm"]))
        h = r["handover"]
        ho = ("the left gripper never closed" if h["left_close_step"] is None else
              f"left closed at step {h['left_close_step']} with the fingertips {h['tips_cm']:.1f} "
              f"cm apart, right let go " + ("never" if h["right_open_step"] is None else
                                            f"{h['release_gap']} steps later"))
        print(f"seed {r['seed']}: {'success' if r['success'] else 'failure'}, closest "
              f"{r['closest_cm']:.1f} cm at step {r['closest_step']}, {off}; {ho}")
    offs = np.array([r["offset_cm"] for r in rows if r["offset_cm"] is not None])
    if len(offs) and not args.json:
        print("mean offset at closing (cm): x {:+.1f} y {:+.1f} z {:+.1f}; mean |offset| "
              "{:.1f} cm; median closest approach {:.1f} cm".format(
                  *offs.mean(0), float(np.linalg.norm(offs, axis=1).mean()),
                  float(np.median([r["closest_cm"] for r in rows]))))
    if not args.json:
        for name, group in (("successes", [r for r in rows if r["success"]]),
                            ("failures", [r for r in rows if not r["success"]])):
            gaps = [r["handover"]["release_gap"] for r in group
                    if r["handover"]["release_gap"] is not None]
            tips = [r["handover"]["tips_cm"] for r in group if r["handover"]["tips_cm"] is not None]
            if gaps:
                print(f"hand-over, {len(group)} {name}: release gap median {np.median(gaps):.0f} "
                      f"steps (range {min(gaps)}-{max(gaps)}); fingertips apart at the left "
                      f"close median {np.median(tips):.1f} cm ({len(gaps)} let go)")
            line = arrival_summary([r["handover"] for r in group])
            if line:
                print(f"hand-over, {len(group)} {name}: {line}")
    rel = [r["release"] for r in rows if r["release"] is not None]
    if rel and not args.json:
        lead = [r["step"] - r["request"] for r in rel]
        early = sum(all(p is None or p > r["step"] for p in r["earlier_plans"]) and
                    any(p is not None for p in r["earlier_plans"]) for r in rel)
        print(f"release commanded {min(lead)}-{max(lead)} steps after its chunk's request; in "
              f"{early} of {len(rel)} episodes before every earlier chunk that planned it")
    gain = localisation_gain(rows)
    if gain is not None:
        if args.json:
            print(json.dumps({"localisation_gain": gain}))
        else:
            print("localisation gain (fingertip at closing on cube position): " + "; ".join(
                f"{a} {g['gain']:.2f} (residual {g['residual_cm']:.1f} cm, cube spread "
                f"{g['cube_std_cm']:.1f} cm)" for a, g in gain.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
