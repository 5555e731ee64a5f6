"""The policy server's wire format and a server that keeps serving through malformed frames:
garbage bytes, an oversized length, wrong field types, a pickle payload, a forbidden dtype."""

from __future__ import annotations

import pickle
import socket
import struct

import msgpack
import numpy as np
import pytest

from xr0.runtime import Observation
from xr0.serve import PolicyServer, RemotePolicy, wire

H, D = 6, 14


class EchoPolicy:
    """Deterministic: row i = state + i (+ seed), the clean prefix as the first rows."""

    chunk_length = H
    supports_prefix = True
    joint_names = tuple(f"j{i}" for i in range(D))
    cameras = ("cam_high", "cam_left_wrist")

    def infer(self, obs, prefix, seed=None):
        out = obs.state[None, :] + np.arange(H)[:, None] + (seed or 0)
        out = out + obs.images["cam_high"].mean() / 255.0
        if prefix is not None:
            out[:len(prefix)] = prefix
        return out


def observation(size=(224, 224), step=5):
    rng = np.random.default_rng(step)
    images = {c: rng.integers(0, 255, (*size, 3), dtype=np.uint8) for c in EchoPolicy.cameras}
    return Observation(step, 1.5, np.linspace(-1, 1, D), images, "transfer the cube")


def test_arrays_round_trip_and_bad_arrays_are_refused():
    for a in (np.arange(6, dtype=np.uint8).reshape(2, 3), np.ones((2, 3), np.float32),
              np.linspace(0, 1, 5), np.arange(4, dtype=">f8")):
        b = wire.unpack_array(wire.pack_array(a), "a")
        assert b.dtype == a.dtype.newbyteorder("<") and np.array_equal(a, b)
    with pytest.raises(TypeError):
        wire.pack_array(np.array(["x"], dtype=object))
    good = wire.pack_array(np.zeros(4))
    for bad, match in [({**good, "dtype": "|O"}, "not allowed"),
                       ({**good, "shape": [5]}, "do not hold"),
                       ({**good, "shape": [-4]}, "non-negative"),
                       ({**good, "data": "text"}, "raw bytes"),
                       ({**good, "extra": 1}, "array map"),
                       ({**good, "shape": [1, 1, 1, 1, 4]}, "at most")]:
        with pytest.raises(wire.ProtocolError, match=match):
            wire.unpack_array(bad, "a")


def test_a_pickle_payload_is_never_unpickled():
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    with pytest.raises(wire.ProtocolError):
        wire.decode(pickle.dumps(Boom()))
    # a pickle inside a well-formed message is only bytes, and not an array
    with pytest.raises(wire.ProtocolError, match="array map"):
        wire.unpack_array(pickle.dumps(np.zeros(3)), "state")


def test_bytes_per_request_two_224_views():
    obs = observation()
    frame = wire.encode({"type": "infer", "id": 1, "obs": wire.pack_observation(obs),
                         "prefix": wire.pack_array(np.zeros((4, D)))})
    pixels = 2 * 224 * 224 * 3
    overhead = len(frame) - pixels - 4 * D * 8 - D * 8
    print(f"\nbytes per request at 2 x 224x224 raw RGB, 14-d state, 4-step prefix: {len(frame)} "
          f"({pixels} pixel bytes + {overhead} bytes of framing and fields)")
    assert 0 < overhead < 1024


def _raw(addr, frames: list[bytes]) -> list[dict]:
    """Send raw frames on one connection (after a good hello) and read one reply per frame."""
    out = []
    with socket.create_connection(addr, timeout=5) as s:
        wire.send_msg(s, {"type": "hello", "version": wire.PROTOCOL_VERSION, "token": None})
        assert wire.decode(wire.recv_frame(s))["type"] == "hello"
        for f in frames:
            s.sendall(f)
            out.append(wire.decode(wire.recv_frame(s)))
    return out


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_malformed_frames_get_errors_and_the_server_keeps_serving():
    obs = observation(size=(32, 32))
    good = wire.pack_observation(obs)
    with PolicyServer(EchoPolicy()) as server:
        addr = server.address
        replies = _raw(addr, [
            _frame(b"\xc1\xc1 garbage \x00\xff"),
            _frame(pickle.dumps({"type": "infer"})),
            _frame(msgpack.packb([1, 2, 3])),
            _frame(msgpack.packb({"type": "infer", "id": 1, "obs": {**good, "state": "abc"}})),
            _frame(msgpack.packb({"type": "infer", "id": 2, "obs": {**good, "step": "3"}})),
            _frame(msgpack.packb({"type": "infer", "id": 3, "obs": {**good, "state": wire.pack_array(np.zeros(3))}})),
            _frame(msgpack.packb({"type": "infer", "id": 4, "obs": good, "prefix": wire.pack_array(np.zeros((H, D)))})),
            _frame(msgpack.packb({"type": "infer", "id": 5, "obs": {**good, "images": {"cam_high": wire.pack_array(np.zeros((4, 4), np.float64))}}})),
            _frame(msgpack.packb({"type": "shutdown", "id": 6})),
            _frame(msgpack.packb(msgpack.ExtType(1, b"x"))),
            wire.encode({"type": "infer", "id": 7, "obs": good, "prefix": None}),
        ])
        assert [r["type"] for r in replies] == ["error"] * 10 + ["chunk"]
        assert replies[5]["code"] == "mismatch" and "14" in replies[5]["message"]
        assert "unknown message type" in replies[8]["message"]
        np.testing.assert_allclose(wire.unpack_array(replies[-1]["actions"], "a"),
                                   EchoPolicy().infer(obs, None))
        # an oversized length: error, that connection closed, the server goes on
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(struct.pack(">I", wire.MAX_FRAME_BYTES + 1))
            r = wire.decode(wire.recv_frame(s))
            assert r["code"] == "too_large"
            with pytest.raises(wire.ConnectionClosed):
                wire.recv_frame(s)
        # requests before the handshake are refused; a wrong protocol version is told so
        with socket.create_connection(addr, timeout=5) as s:
            wire.send_msg(s, {"type": "infer", "id": 1, "obs": good})
            assert wire.decode(wire.recv_frame(s))["code"] == "handshake"
            wire.send_msg(s, {"type": "hello", "version": 99, "token": None})
            r = wire.decode(wire.recv_frame(s))
            assert r["code"] == "version" and "same version" in r["message"]
        remote = RemotePolicy(*addr)
        np.testing.assert_allclose(remote.infer(obs, None), EchoPolicy().infer(obs, None))
        remote.close()
