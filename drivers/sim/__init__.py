"""The simulated bimanual ALOHA rig: gym-aloha's MuJoCo scenes behind the drivers.rig.Rig interface.

    scene.py     the MuJoCo model (gym-aloha's physics, wrist cameras added), joint indexing
    tasks.py     transfer cube / insertion: seeded initial states, gym-aloha's reward and success
    operator.py  the scripted operator that plays the leader arms (waypoints + damped IK)
    rig.py       SimRig: real-time (threads paced at the control rate) or stepped

Offscreen rendering uses the GL backend named by MUJOCO_GL (osmesa or egl on a headless machine;
both render a 240x320 frame in ~8 ms on one CPU core here). It must be set before mujoco is first
imported; when unset, EGL is chosen here.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
