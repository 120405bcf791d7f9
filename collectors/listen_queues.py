"""Accept queues of listening TCP sockets: how full, and how big.

A connection the kernel has completed but the server has not yet accept()ed
waits in the listening socket's accept queue; when that queue is full, new
connections are dropped (``ListenOverflows``) before the server ever sees
them, so the server's own metrics cannot show it.

For a listening socket the kernel reports the queue's length as the
``rx_queue`` column of /proc/net/tcp, but that file's ``tx_queue`` is 0 for
listeners: the bound (the listen backlog) is only reported over sock_diag
netlink, which is where ``ss -lt`` gets its Send-Q. So the bound comes from
netlink, and /proc/net/tcp is the fallback that knows depths only.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

TCP_LISTEN = 10
SOCK_DIAG_BY_FAMILY = 20
NETLINK_SOCK_DIAG = 4
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

_NLMSG = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid.
_REQUEST = struct.Struct("=BBBxI48x")


@dataclass(frozen=True, slots=True)
class ListenQueue:
    port: int
    depth: int
    capacity: int | None


def _parse_message(payload: bytes) -> ListenQueue | None:
    # inet_diag_msg: family, state, timer, retrans (4 bytes); sockid (48 bytes,
    # source port first, big-endian); expires, rqueue, wqueue, uid, inode.
    # For a listener rqueue is the accept queue and wqueue its bound.
    if len(payload) < 72:
        return None
    sport = struct.unpack_from(">H", payload, 4)[0]
    rqueue, wqueue = struct.unpack_from("=II", payload, 4 + 48 + 4)
    return ListenQueue(sport, rqueue, wqueue)


def from_netlink(timeout_s: float = 1.0) -> list[ListenQueue]:
    """Every TCP listener's accept queue, IPv4 and IPv6; OSError when refused."""
    queues: list[ListenQueue] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(timeout_s)
        for sequence, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN)
            header = _NLMSG.pack(
                _NLMSG.size + len(request),
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST | NLM_F_DUMP,
                sequence,
                0,
            )
            sock.send(header + request)
            done = False
            while not done:
                data = sock.recv(1 << 16)
                if not data:
                    break
                offset = 0
                while offset + _NLMSG.size <= len(data):
                    length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
                    if length < _NLMSG.size:
                        done = True
                        break
                    payload = data[offset + _NLMSG.size : offset + length]
                    if kind == NLMSG_DONE:
                        done = True
                        break
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", payload)[0] if payload else 0
                        raise OSError(code, os.strerror(code) if code else "netlink error")
                    if kind == SOCK_DIAG_BY_FAMILY:
                        queue = _parse_message(payload)
                        if queue is not None:
                            queues.append(queue)
                    offset += (length + 3) & ~3
    return queues


def from_proc(root: Path = Path("/proc")) -> list[ListenQueue]:
    """Accept-queue depths from /proc/net/tcp{,6}; bounds unknown there."""
    queues: list[ListenQueue] = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (root / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 5 or fields[3] != "0A":
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            depth = int(fields[4].split(":")[1], 16)
            queues.append(ListenQueue(port, depth, None))
    return queues


def by_port(queues: list[ListenQueue]) -> dict[int, ListenQueue]:
    """One entry per port (a port may have several listeners: v4, v6, reuseport)."""
    merged: dict[int, ListenQueue] = {}
    for q in queues:
        seen = merged.get(q.port)
        if seen is None:
            merged[q.port] = q
            continue
        capacity = (
            None if seen.capacity is None or q.capacity is None else seen.capacity + q.capacity
        )
        merged[q.port] = ListenQueue(q.port, seen.depth + q.depth, capacity)
    return merged
