"""The policy server and its client: a GPU machine serves a ChunkPolicy over TCP
(`main.py serve`) and the workstation runs it as RemotePolicy, a ChunkPolicy like any other.

    workstation: ChunkRuntime -> RemotePolicy.infer ---- msgpack frames over TCP ----> PolicyServer
                                                    <--- chunk + server timing --------  policy.infer

No Qt, no drivers; the wire format (xr0.serve.wire) never unpickles anything.
"""

from xr0.serve.client import (LayoutMismatch, RemotePolicy, RemotePolicyError, RemoteReplyError,
                              RemoteServerError, RemoteTimeout, RemoteUnreachable, parse_address)
from xr0.serve.served import ServedXR0, load_served_policy
from xr0.serve.server import PolicyServer, check_bind, policy_metadata
from xr0.serve.wire import PROTOCOL_VERSION, ProtocolError

__all__ = ["LayoutMismatch", "PROTOCOL_VERSION", "PolicyServer", "ProtocolError", "RemotePolicy",
           "RemotePolicyError", "RemoteReplyError", "RemoteServerError", "RemoteTimeout",
           "RemoteUnreachable", "ServedXR0", "check_bind", "load_served_policy", "parse_address",
           "policy_metadata"]
