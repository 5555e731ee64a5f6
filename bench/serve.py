"""The policy server's transport cost on localhost.

A PolicyServer on 127.0.0.1 serves a policy that costs nothing (it echoes the state), so what is
left of RemotePolicy.infer's wall time after subtracting the server's inference time is the
transport: client encoding, two socket hops, server decoding and checks, reply decoding. Measured
with two raw 224x224 RGB views and a 14-d state per request (the size of an XR0 request from a
two-camera ALOHA rig), plus the bytes each request takes on the wire.

    python main.py bench serve [--quick] [--json]     (or: python -m bench.serve)
"""

from __future__ import annotations

import time

import numpy as np

from bench import Figure

ANCHOR = ("XR0 inference 80 ms on an RTX 4090; a 50 Hz control step is 20 ms, so transport "
          "should stay well under one step")
CAMERAS = ("cam_high", "cam_left_wrist")


class EchoPolicy:
    chunk_length = 30
    supports_prefix = True
    cameras = CAMERAS

    def infer(self, obs, prefix):
        out = np.tile(obs.state, (self.chunk_length, 1))
        if prefix is not None:
            out[:len(prefix)] = prefix
        return out


def run(quick: bool = False):
    from xr0.runtime import Observation
    from xr0.serve import PolicyServer, RemotePolicy

    n = 50 if quick else 300
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for c in CAMERAS}
    state = rng.normal(size=14)
    prefix = np.tile(state, (4, 1))
    overhead, round_trip = [], []
    with PolicyServer(EchoPolicy()) as server:
        remote = RemotePolicy(*server.address)
        for i in range(n + 10):
            obs = Observation(i, 0.0, state, images, "transfer the cube")
            t0 = time.perf_counter()
            remote.infer(obs, prefix)
            wall = (time.perf_counter() - t0) * 1e3
            if i >= 10:  # warm-up
                overhead.append(wall - remote.last_timing["server_infer_ms"])
                round_trip.append(wall)
        req, rep = remote.last_timing["request_bytes"], remote.last_timing["reply_bytes"]
        remote.close()
    detail = {"requests": n, "images": "2 x 224x224x3 uint8 raw", "state_dim": 14,
              "prefix": 4, "chunk": 30}
    p50, p95 = np.percentile(overhead, [50, 95])
    yield Figure("serve", "transport overhead p50", float(p50), "ms", "< 20 ms (one 50 Hz step)",
                 ANCHOR, bool(p50 < 20), detail)
    yield Figure("serve", "transport overhead p95", float(p95), "ms", "< 20 ms (one 50 Hz step)",
                 ANCHOR, bool(p95 < 20), detail)
    yield Figure("serve", "round trip p50", float(np.percentile(round_trip, 50)), "ms", "", ANCHOR,
                 None, detail)
    yield Figure("serve", "bytes per request", float(req), "B", "", "2 x 150,528 pixel bytes",
                 None, {**detail, "reply_bytes": rep})


if __name__ == "__main__":
    import json
    import sys

    for fig in run(quick="--quick" in sys.argv):
        print(json.dumps(fig.as_dict()))
