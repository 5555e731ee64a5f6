"""RemotePolicy: a ChunkPolicy whose inference runs on a policy server (`main.py serve`).

It connects and handshakes when built, so an unreachable server, a wrong token or a policy whose
action layout does not match the rig fail before a run starts. During a run every error raises
from infer(); the runtime's inference worker reports it and the runtime holds the arms:

    RemoteUnreachable   nothing listens at host:port (also after one failed reconnect)
    RemoteTimeout       no reply within timeout_s (the connection is dropped; the next call
                        reconnects)
    RemoteReplyError    a reply of the wrong shape, dtype or id, or non-finite actions
    RemoteServerError   the server refused the request or its policy failed (code, message)
    LayoutMismatch      (ValueError) the served policy's joints or cameras do not fit the rig

A connection dropped between requests (server restarted, network blip) is re-opened once per
call. The runtime measures latency around infer(), so transport time is part of it; `timings`
keeps the split: round trip vs the server's inference and queue time.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Sequence

import numpy as np

from xr0.serve import wire


class RemotePolicyError(RuntimeError):
    """A remote policy call failed; the message says what to do."""


class RemoteUnreachable(RemotePolicyError, ConnectionError):
    pass


class RemoteTimeout(RemotePolicyError, TimeoutError):
    pass


class RemoteReplyError(RemotePolicyError):
    pass


class RemoteServerError(RemotePolicyError):
    def __init__(self, code: str, message: str):
        super().__init__(f"the policy server refused ({code}): {message}")
        self.code = code


class LayoutMismatch(ValueError):
    """The served policy acts on other joints, or reads other cameras, than the rig has."""


def parse_address(text: str, default_port: int = 8765) -> tuple[str, int]:
    """'host:port', 'tcp://host:port', '[::1]:port' or 'host' -> (host, port)."""
    s = text.removeprefix("tcp://").strip().rstrip("/")
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        port = rest.removeprefix(":")
    elif s.count(":") == 1:
        host, port = s.split(":")
    else:
        host, port = s, ""
    try:
        return host or "127.0.0.1", int(port) if port else default_port
    except ValueError:
        raise ValueError(f"policy server address {text!r}: expected host:port, e.g. "
                         f"tcp://127.0.0.1:{default_port}") from None


class RemotePolicy:
    """ChunkPolicy over TCP. joint_names / cameras: the rig's, checked against the served policy
    at connect (see check_compatible). seed: the noise seed sent with every request (None: the
    server draws fresh noise)."""

    def __init__(self, host: str, port: int, token: str | None = None, timeout_s: float = 10.0,
                 connect_timeout_s: float = 5.0, joint_names: Sequence[str] | None = None,
                 cameras: Sequence[str] | None = None, seed: int | None = None,
                 history: int = 1000):
        self.host, self.port = host, int(port)
        self.token = token
        self.seed = seed  # sent with every request when set (the server's policy must take it)
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self.meta: dict = {}
        self.timings: collections.deque[dict] = collections.deque(maxlen=history)
        self.last_timing: dict | None = None
        self._connect()
        self.chunk_length = int(self.meta["chunk_length"])
        self.supports_prefix = bool(self.meta["supports_prefix"])
        if self.meta.get("supports_guidance"):
            self.infer_guided = self._infer_guided  # the rtc strategy looks for this attribute
        if joint_names is not None or cameras is not None:
            self.check_compatible(joint_names, cameras)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- connection ------------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
        except (ConnectionRefusedError, socket.gaierror, OSError) as e:
            raise RemoteUnreachable(
                f"no policy server at {self.address} ({e.strerror or e}): start one on the GPU "
                f"machine with `python main.py serve --policy CHECKPOINT --port {self.port}` and "
                f"check the host, port and firewall") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.connect_timeout_s)
        try:
            wire.send_msg(sock, {"type": "hello", "version": wire.PROTOCOL_VERSION,
                                 "token": self.token})
            reply = wire.decode(wire.recv_frame(sock))
        except (TimeoutError, socket.timeout) as e:
            sock.close()
            raise RemoteTimeout(f"the policy server at {self.address} accepted the connection "
                                f"but did not answer the handshake within "
                                f"{self.connect_timeout_s:.0f} s: is it a policy server?") from e
        except (OSError, wire.ProtocolError) as e:
            sock.close()
            raise RemoteUnreachable(f"the handshake with {self.address} failed ({e}): is it a "
                                    f"policy server of this version?") from e
        if reply["type"] == "error":
            sock.close()
            raise RemoteServerError(str(reply.get("code")), str(reply.get("message")))
        meta = reply.get("meta")
        if reply["type"] != "hello" or not isinstance(meta, dict) or \
                not isinstance(meta.get("chunk_length"), int):
            sock.close()
            raise RemoteReplyError(f"{self.address} answered the handshake with {reply['type']!r}"
                                   f" and no policy metadata")
        if self.meta and (meta["chunk_length"], meta.get("dim")) != \
                (self.meta["chunk_length"], self.meta.get("dim")):
            sock.close()
            raise RemoteReplyError(f"the policy at {self.address} changed across a reconnect "
                                   f"(H {self.meta['chunk_length']} -> {meta['chunk_length']}): "
                                   f"restart the run")
        self.meta = meta
        sock.settimeout(self.timeout_s)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_compatible(self, joint_names: Sequence[str] | None = None,
                         cameras: Sequence[str] | None = None) -> None:
        """Raise LayoutMismatch unless the served policy acts on exactly these joints (in this
        order) and every camera it reads is among `cameras`."""
        theirs = self.meta.get("joint_names")
        if joint_names is not None:
            ours = [str(n) for n in joint_names]
            if theirs is not None and list(theirs) != ours:
                raise LayoutMismatch(
                    f"the policy at {self.address} ({self.meta.get('model')}) acts on "
                    f"{len(theirs)} joints [{', '.join(theirs)}], the rig on {len(ours)} "
                    f"[{', '.join(ours)}]: serve a checkpoint fine-tuned on this rig's layout")
            if theirs is None and self.meta.get("dim") not in (None, len(ours)):
                raise LayoutMismatch(f"the policy at {self.address} acts on {self.meta['dim']} "
                                     f"dims, the rig on {len(ours)}: serve a checkpoint for this "
                                     f"rig")
        if cameras is not None:
            missing = [c for c in self.meta.get("cameras", []) if c not in set(cameras)]
            if missing:
                raise LayoutMismatch(
                    f"the policy at {self.address} reads cameras {', '.join(missing)} that the "
                    f"rig does not have (it has: {', '.join(cameras) or 'none'}): add them to the "
                    f"rig config or serve a checkpoint trained on these cameras")

    # -- ChunkPolicy -----------------------------------------------------------------------------
    def infer(self, obs, prefix: np.ndarray | None) -> np.ndarray:
        msg = {"type": "infer", "obs": self._pack_obs(obs),
               "prefix": None if prefix is None or not len(prefix)
               else wire.pack_array(np.asarray(prefix, np.float64))}
        return self._call(msg, obs)

    def _infer_guided(self, obs, prev_chunk: np.ndarray, weights: np.ndarray,
                      beta: float) -> np.ndarray:
        msg = {"type": "infer_guided", "obs": self._pack_obs(obs),
               "prev_chunk": wire.pack_array(np.asarray(prev_chunk, np.float64)),
               "weights": wire.pack_array(np.asarray(weights, np.float64)), "beta": float(beta)}
        return self._call(msg, obs)

    def _pack_obs(self, obs) -> dict:
        D = self.meta.get("dim")
        if D is not None and np.shape(obs.state) != (D,):
            raise LayoutMismatch(f"the observation's state has shape {np.shape(obs.state)}, the "
                                 f"policy at {self.address} expects ({D},)")
        missing = [c for c in self.meta.get("cameras", []) if c not in obs.images]
        if missing:
            raise LayoutMismatch(f"the observation has no image from {', '.join(missing)}, which "
                                 f"the policy at {self.address} reads: check the rig's cameras")
        return wire.pack_observation(obs)

    def _call(self, msg: dict, obs) -> np.ndarray:
        if self.seed is not None:
            msg["seed"] = int(self.seed)
        with self._lock:
            msg["id"] = self._next_id
            self._next_id += 1
            frame = wire.encode(msg)
            t0 = time.perf_counter()
            for attempt in (0, 1):
                if self._sock is None:
                    self._connect()  # raises RemoteUnreachable / RemoteTimeout itself
                try:
                    self._sock.sendall(frame)
                    body = wire.recv_frame(self._sock)
                    break
                except (TimeoutError, socket.timeout) as e:
                    self.close()  # a late reply must not be read as the next request's
                    raise RemoteTimeout(
                        f"the policy server at {self.address} did not answer within "
                        f"{self.timeout_s:g} s: it is overloaded or its model is too slow for "
                        f"this timeout; the arms hold (raise the timeout or serve on a faster "
                        f"GPU)") from e
                except (wire.ProtocolError, OSError) as e:  # dropped: reconnect once
                    self.close()
                    if attempt == 1:
                        raise RemoteUnreachable(f"lost the connection to the policy server at "
                                                f"{self.address} twice ({e}): check that it "
                                                f"is still running") from e
            t1 = time.perf_counter()
        try:
            reply = wire.decode(body)
        except wire.ProtocolError as e:
            raise RemoteReplyError(f"unreadable reply from {self.address}: {e}") from e
        if reply["type"] == "error":
            raise RemoteServerError(str(reply.get("code")), str(reply.get("message")))
        actions = self._check_reply(reply, msg["id"], obs)
        timing = reply.get("timing") if isinstance(reply.get("timing"), dict) else {}
        rt = (t1 - t0) * 1e3
        server = {k: float(timing.get(k, 0.0)) for k in ("decode_ms", "queue_ms", "infer_ms")}
        self.last_timing = {"round_trip_ms": rt, "server_infer_ms": server["infer_ms"],
                            "server_queue_ms": server["queue_ms"],
                            "transport_ms": rt - server["infer_ms"] - server["queue_ms"],
                            "request_bytes": len(frame), "reply_bytes": len(body) + 4}
        self.timings.append(self.last_timing)
        return actions

    def _check_reply(self, reply: dict, msg_id: int, obs) -> np.ndarray:
        if reply["type"] != "chunk" or reply.get("id") != msg_id:
            raise RemoteReplyError(f"{self.address} answered request {msg_id} with "
                                   f"{reply['type']!r} #{reply.get('id')}: restart the run")
        try:
            actions = wire.unpack_array(reply.get("actions"), "chunk.actions")
        except wire.ProtocolError as e:
            raise RemoteReplyError(f"bad chunk from {self.address}: {e}") from e
        want = (self.chunk_length, int(np.shape(obs.state)[0]))
        if actions.shape != want or actions.dtype.kind != "f":
            raise RemoteReplyError(
                f"the policy at {self.address} returned a chunk of shape {actions.shape} "
                f"{actions.dtype}, expected {want} float (H = {self.chunk_length} announced at "
                f"the handshake, D from the rig): the served checkpoint does not fit this rig")
        if not np.isfinite(actions).all():
            raise RemoteReplyError(f"the policy at {self.address} returned NaN/inf actions")
        return np.array(actions, dtype=np.float64)
