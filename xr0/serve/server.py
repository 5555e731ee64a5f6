"""PolicyServer: one ChunkPolicy served over TCP to workstations (xr0.serve.wire for the format).

Plain blocking sockets with one thread per connection. Inference is a blocking call into torch
(which releases the GIL) on one accelerator, so requests are serialised by one lock whatever the
transport; the time a request waits for it is reported as its queue time. A thread per
connection keeps each client's frame reading simple and isolated (a client sending garbage or
stalling mid-frame never blocks another), and the number of clients is small and bounded
(max_clients), so asyncio would add an event loop and an executor hop for nothing.

Security: the server binds to 127.0.0.1 unless told otherwise, and refuses any other address
without a shared token; the token is checked at the handshake with hmac.compare_digest. Frames
are msgpack with raw array buffers (never pickle) and bounded in size; a malformed message gets
an error reply and the server keeps serving.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import socket
import threading
import time
from typing import Callable

import numpy as np

from xr0.runtime.policy import Observation, supports_guidance
from xr0.serve import wire
from xr0.serve.wire import ProtocolError

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise PermissionError(
            f"refusing to serve on {host} without a token: anyone who can reach that address "
            f"could drive the robot's policy. Pass --token SECRET (clients pass the same), or "
            f"serve on {LOOPBACK} and reach it through an SSH tunnel")


def policy_metadata(policy) -> dict:
    """What the handshake tells a client about the served policy.

    chunk_length, supports_prefix, supports_guidance; joint_names (the D action/state dims in
    order, or None if the policy does not say) and dim; cameras (the image names it reads, [] for
    none) and image_size ([H, W] it resizes to, or None); model (a name); seeded (whether a
    request may carry the noise seed: infer takes `seed=`)."""
    joint_names = getattr(policy, "joint_names", None)
    joint_names = [str(n) for n in joint_names] if joint_names is not None else None
    dim = getattr(policy, "dim", None)
    if dim is None and joint_names is not None:
        dim = len(joint_names)
    cameras = getattr(policy, "cameras", None) or getattr(policy, "camera_names", None) or []
    size = getattr(policy, "image_size", None)
    model = getattr(policy, "model_name", None) or getattr(policy, "name", None)
    return {"chunk_length": int(policy.chunk_length),
            "supports_prefix": bool(getattr(policy, "supports_prefix", False)),
            "supports_guidance": supports_guidance(policy),
            "joint_names": joint_names, "dim": int(dim) if dim is not None else None,
            "cameras": [str(c) for c in cameras],
            "image_size": [int(s) for s in size] if size else None,
            "model": str(model or type(policy).__name__), "seeded": _takes_seed(policy.infer)}


def _takes_seed(fn) -> bool:
    try:
        return "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class PolicyServer:
    """Serve `policy` on host:port (port 0 picks a free one; `address` tells which).

    log: called with one line per request and per connection event (None: silent)."""

    def __init__(self, policy, host: str = LOOPBACK, port: int = 0, token: str | None = None,
                 max_clients: int = 8, handshake_timeout_s: float = 10.0,
                 max_frame_bytes: int = wire.MAX_FRAME_BYTES,
                 log: Callable[[str], None] | None = None):
        check_bind(host, token)
        self.policy = policy
        self.meta = policy_metadata(policy)
        self.token = token or None
        self.max_clients = int(max_clients)
        self.handshake_timeout_s = float(handshake_timeout_s)
        self.max_frame_bytes = int(max_frame_bytes)
        self.log = log or (lambda _line: None)
        self._infer_lock = threading.Lock()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = threading.Event()
        self.requests = 0
        self.errors = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, int(port)))
        except OSError as e:
            self._sock.close()
            raise OSError(e.errno, f"cannot serve on {host}:{port} ({e.strerror}): pick another "
                                   f"--port (0 picks a free one)") from e
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> PolicyServer:
        """Accept connections on a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="policy-server",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Accept connections until close()."""
        while not self._closed.is_set():
            try:
                conn, peer = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break  # closed
            with self._lock:
                full = len(self._conns) >= self.max_clients
                if not full:
                    self._conns.add(conn)
            if full:
                self._reply_error(conn, None, "busy", f"the server already has "
                                  f"{self.max_clients} clients; close one and reconnect")
                conn.close()
                continue
            threading.Thread(target=self._serve_conn, args=(conn, peer), daemon=True,
                             name=f"policy-conn-{peer[1]}").start()

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self.disconnect_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def disconnect_all(self) -> None:
        """Drop every client connection (clients reconnect on their next request); keep serving."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one connection --------------------------------------------------------------------------
    def _serve_conn(self, conn: socket.socket, peer) -> None:
        who = f"{peer[0]}:{peer[1]}"
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(self.handshake_timeout_s)
        greeted = False
        try:
            while not self._closed.is_set():
                try:
                    body = wire.recv_frame(conn, self.max_frame_bytes)
                except ProtocolError as e:  # oversized: the stream cannot be resynchronised
                    self._reply_error(conn, None, e.code, f"{e}; closing the connection")
                    self.log(f"{who}: {e}; connection closed")
                    return
                t_recv = time.perf_counter()
                msg_id = None
                try:
                    msg = wire.decode(body)
                    msg_id = msg.get("id") if isinstance(msg.get("id"), int) else None
                    if not greeted:
                        greeted = self._handshake(conn, msg, who)
                        if not greeted:
                            return
                        conn.settimeout(None)
                        continue
                    self._request(conn, msg, msg_id, t_recv, len(body), who)
                except ProtocolError as e:
                    self._reply_error(conn, msg_id, e.code, str(e))
                    self.log(f"{who}: refused a message: {e}")
        except (wire.ConnectionClosed, ConnectionError, TimeoutError, socket.timeout, OSError):
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            self.log(f"{who}: disconnected")

    def _handshake(self, conn, msg: dict, who: str) -> bool:
        if msg["type"] != "hello":
            raise ProtocolError("the first message must be 'hello' {version, token}", "handshake")
        version = wire.field(msg, "version", int, "hello")
        if version != wire.PROTOCOL_VERSION:
            self._reply_error(conn, None, "version",
                              f"client speaks protocol {version}, server {wire.PROTOCOL_VERSION}: "
                              f"run the same version of the workstation on both machines")
            return False
        token = msg.get("token")
        if self.token is not None:
            given = token.encode() if isinstance(token, str) else b""
            if not hmac.compare_digest(given, self.token.encode()):
                self._reply_error(conn, None, "unauthorized",
                                  "wrong or missing token: pass the --token the server was "
                                  "started with")
                self.log(f"{who}: refused (wrong token)")
                return False
        wire.send_msg(conn, {"type": "hello", "version": wire.PROTOCOL_VERSION,
                             "meta": self.meta})
        self.log(f"{who}: connected")
        return True

    def _request(self, conn, msg: dict, msg_id, t_recv: float, nbytes: int, who: str) -> None:
        kind = msg["type"]
        if kind not in ("infer", "infer_guided"):
            raise ProtocolError(f"unknown message type {kind!r} (infer, infer_guided)")
        if msg_id is None:
            raise ProtocolError(f"{kind}: missing integer field 'id'")
        wobs = wire.unpack_observation(wire.field(msg, "obs", dict, kind))
        H, D = self.meta["chunk_length"], self.meta["dim"]
        dim = wobs.state.shape[0]
        if D is not None and dim != D:
            raise ProtocolError(f"obs.state has {dim} dims; the served policy acts on {D} "
                                f"({', '.join(self.meta['joint_names'] or [])})", "mismatch")
        obs = Observation(wobs.step, wobs.t, np.array(wobs.state, dtype=np.float64),
                          wobs.images, wobs.instruction)
        seed = msg.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ProtocolError(f"{kind}: seed must be an int or nil")
        kw = {} if seed is None else {"seed": seed}
        if seed is not None and not self.meta["seeded"]:
            raise ProtocolError(f"the served {self.meta['model']} takes no seed: send requests "
                                f"without one", "policy")
        if kind == "infer":
            prefix = wire.optional_array(msg, "prefix", kind)
            if prefix is not None:
                if prefix.ndim != 2 or prefix.shape[1] != dim or not 0 < len(prefix) < H:
                    raise ProtocolError(f"infer.prefix must be (d, {dim}) with 0 < d < {H}, got "
                                        f"{prefix.shape}")
                prefix = np.array(prefix, dtype=np.float64)
            use = prefix if self.meta["supports_prefix"] else None
            call = lambda: self.policy.infer(obs, use, **kw)  # noqa: E731
        else:
            if not self.meta["supports_guidance"]:
                raise ProtocolError("the served policy has no infer_guided (rtc)", "policy")
            prev = wire.unpack_array(wire.field(msg, "prev_chunk", dict, kind), "prev_chunk")
            weights = wire.unpack_array(wire.field(msg, "weights", dict, kind), "weights")
            beta = float(wire.field(msg, "beta", (int, float), kind))
            if prev.shape != (H, dim) or weights.shape != (H,):
                raise ProtocolError(f"infer_guided: prev_chunk must be ({H}, {dim}) and weights "
                                    f"({H},), got {prev.shape} and {weights.shape}")
            prev, weights = np.array(prev, np.float64), np.array(weights, np.float64)
            call = lambda: self.policy.infer_guided(obs, prev, weights, beta, **kw)  # noqa: E731
        t_wait = time.perf_counter()
        with self._infer_lock:
            t_start = time.perf_counter()
            try:
                actions = np.asarray(call())
            except Exception as e:  # noqa: BLE001 - reported to the client, the server goes on
                self.errors += 1
                raise ProtocolError(f"the policy failed: {type(e).__name__}: {e}", "policy") from e
            t_end = time.perf_counter()
        if actions.dtype.kind not in "fiu":
            raise ProtocolError(f"the policy returned {actions.dtype} actions", "policy")
        actions = actions.astype(np.float64, copy=False)
        timing = {"decode_ms": (t_wait - t_recv) * 1e3, "queue_ms": (t_start - t_wait) * 1e3,
                  "infer_ms": (t_end - t_start) * 1e3}
        sent = wire.send_msg(conn, {"type": "chunk", "id": msg_id,
                                    "actions": wire.pack_array(actions), "timing": timing})
        self.requests += 1
        self.log(f"{who}: {kind} #{msg_id} step {obs.step}: queue {timing['queue_ms']:.1f} ms, "
                 f"inference {timing['infer_ms']:.1f} ms, {nbytes} B in, {sent} B out")

    def _reply_error(self, conn, msg_id, code: str, message: str) -> None:
        self.errors += 1
        try:
            wire.send_msg(conn, {"type": "error", "id": msg_id, "code": code, "message": message})
        except OSError:
            pass
