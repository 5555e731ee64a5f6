"""The policy server's wire format: length-prefixed msgpack frames over TCP, numpy arrays as raw
buffers. Nothing on the wire is ever unpickled or evaluated.

    frame   = 4-byte big-endian body length N, then N bytes of msgpack (one map per frame)
    array   = {"dtype": "<u1" | "<f4" | "<f8" | "<i8", "shape": [..], "data": bin}
              (little-endian, C order; any other dtype, a shape that does not match the byte
              count, or an oversized array is refused)

Messages (every map has "type"; replies to a request carry its "id"):

    client -> server
      hello         {version, token}                      first message of every connection
      infer         {id, obs, prefix: array (d, D) | nil}
      infer_guided  {id, obs, prev_chunk: array (H, D), weights: array (H,), beta}
    obs = {step, t, state: array (D,), images: {camera: array HxWx3 uint8}, instruction}

    server -> client
      hello         {version, meta}                       meta: see server.policy_metadata
      chunk         {id, actions: array (H, D) float, timing: {queue_ms, infer_ms, decode_ms}}
      error         {id | nil, code, message}             code: one of ERROR_CODES

Images travel raw (no JPEG): decoding is free and the chunk the server computes is the one the
local policy would compute from the same pixels. Two 224x224 RGB views are 2 x 150,528 bytes; the
rest of a request is a few hundred bytes (measured in tests/test_serve_wire.py).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 32 * 1024 * 1024  # 32 MiB: four 640x480 RGB views are 3.7 MB
MAX_ARRAY_DIMS = 4
MAX_CAMERAS = 8
MAX_INSTRUCTION_CHARS = 4096
ALLOWED_DTYPES = {"<u1": np.uint8, "|u1": np.uint8, "<f4": np.float32, "<f8": np.float64,
                  "<i8": np.int64}
ERROR_CODES = ("malformed", "too_large", "version", "unauthorized", "handshake", "mismatch",
               "policy", "busy")


class ProtocolError(ValueError):
    """A frame or message that does not follow the wire format. `code` is one of ERROR_CODES."""

    def __init__(self, message: str, code: str = "malformed"):
        super().__init__(message)
        self.code = code


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (cleanly between frames, or in the middle of one)."""


# -- arrays ------------------------------------------------------------------------------------
def pack_array(a: np.ndarray) -> dict:
    a = np.asarray(a)
    dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    key = dtype.str
    if key not in ALLOWED_DTYPES:
        raise TypeError(f"arrays on the wire are uint8, float32, float64 or int64, not {a.dtype}")
    return {"dtype": key, "shape": list(a.shape),
            "data": np.ascontiguousarray(a, dtype=dtype).tobytes()}


def unpack_array(m, what: str, max_bytes: int = MAX_FRAME_BYTES) -> np.ndarray:
    """A wire array back to numpy (a read-only view of the frame's bytes), checked."""
    if not isinstance(m, dict) or set(m) != {"dtype", "shape", "data"}:
        raise ProtocolError(f"{what}: expected an array map {{dtype, shape, data}}")
    dtype, shape, data = m["dtype"], m["shape"], m["data"]
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"{what}: dtype {dtype!r} is not allowed (uint8, float32, float64, "
                            f"int64 little-endian)")
    if (not isinstance(shape, list) or len(shape) > MAX_ARRAY_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n for n in shape)):
        raise ProtocolError(f"{what}: shape must be a list of at most {MAX_ARRAY_DIMS} "
                            f"non-negative ints, got {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError(f"{what}: data must be raw bytes (msgpack bin)")
    np_dtype = np.dtype(ALLOWED_DTYPES[dtype])
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n * np_dtype.itemsize > max_bytes or len(data) != n * np_dtype.itemsize:
        raise ProtocolError(f"{what}: {len(data)} bytes do not hold shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=np_dtype).reshape(shape)


# -- frames ------------------------------------------------------------------------------------
def _no_ext(code, data):
    raise ProtocolError(f"msgpack extension type {code} is not part of the protocol")


def encode(msg: dict) -> bytes:
    """A message as one frame (header + body)."""
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_FRAME_BYTES}-byte "
                            f"frame limit: send smaller images", "too_large")
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict:
    """A frame body to a message map; anything but one msgpack map with a string type fails."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except ProtocolError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for bad input
        raise ProtocolError(f"the frame is not a msgpack message ({type(e).__name__}: {e})") from e
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("a message is a msgpack map with a string 'type'")
    return msg


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionClosed("the connection was closed"
                                   + (" in the middle of a frame" if got else ""))
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame's body. An announced length over max_bytes raises ProtocolError('too_large')
    without reading the body."""
    (n,) = HEADER.unpack(recv_exact(sock, HEADER.size))
    if n > max_bytes:
        raise ProtocolError(f"frame of {n} bytes announced; the limit is {max_bytes}", "too_large")
    return recv_exact(sock, n)


def send_msg(sock: socket.socket, msg: dict) -> int:
    frame = encode(msg)
    sock.sendall(frame)
    return len(frame)


# -- message fields ----------------------------------------------------------------------------
@dataclass
class WireObservation:
    step: int
    t: float
    state: np.ndarray
    images: dict[str, np.ndarray]
    instruction: str


def pack_observation(obs) -> dict:
    """An xr0.runtime.Observation as a wire map (its `extra` stays on the client: it holds local
    objects such as a simulator's state)."""
    return {"step": int(obs.step), "t": float(obs.t), "state": pack_array(obs.state),
            "images": {str(k): pack_array(np.asarray(v, dtype=np.uint8))
                       for k, v in obs.images.items()},
            "instruction": str(obs.instruction)}


def _field(msg: dict, key: str, types, what: str):
    if key not in msg:
        raise ProtocolError(f"{what}: missing field {key!r}")
    v = msg[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        raise ProtocolError(f"{what}: field {key!r} has type {type(v).__name__}")
    return v


def unpack_observation(m) -> WireObservation:
    if not isinstance(m, dict):
        raise ProtocolError("obs must be a map")
    step = _field(m, "step", int, "obs")
    t = float(_field(m, "t", (int, float), "obs"))
    state = unpack_array(_field(m, "state", dict, "obs"), "obs.state")
    if state.ndim != 1 or state.dtype.kind != "f":
        raise ProtocolError(f"obs.state must be a 1-d float array, got {state.dtype} "
                            f"{state.shape}")
    images_m = _field(m, "images", dict, "obs")
    if len(images_m) > MAX_CAMERAS:
        raise ProtocolError(f"obs.images: at most {MAX_CAMERAS} cameras")
    images = {}
    for name, im in images_m.items():
        a = unpack_array(im, f"obs.images[{name!r}]")
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ProtocolError(f"obs.images[{name!r}] must be HxWx3 uint8, got {a.dtype} "
                                f"{a.shape}")
        images[name] = a
    instruction = _field(m, "instruction", str, "obs")
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise ProtocolError(f"obs.instruction longer than {MAX_INSTRUCTION_CHARS} characters")
    return WireObservation(step, t, state, images, instruction)


def field(msg: dict, key: str, types, what: str):
    """A typed field of a message (ProtocolError if missing or of another type)."""
    return _field(msg, key, types, what)


def optional_array(msg: dict, key: str, what: str) -> np.ndarray | None:
    v = msg.get(key)
    return None if v is None else unpack_array(v, f"{what}.{key}")
