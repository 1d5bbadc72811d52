"""Which host each rank runs on, recorded at start-up, so that a lost-rank error can name the lost node.

When a node dies mid-job, the survivors only see their own side of it: gloo raises ``Connection closed by peer
[10.0.0.12]:41234`` (the peer's address) or a timeout without any address; NCCL names ranks. Asking the other
ranks then is impossible (they are gone), so every rank learns the table while everyone is alive:
:func:`record` runs one ``all_gather_object`` right after the default process group is created
(``parallel.initialize``), and :func:`lost_node_note` reads only the local table afterwards -- no collective, safe
after a peer died.

The note names:
* the node whose address appears in the error message (gloo's peer address), with its ranks; else
* every node other than this rank's own (with their ranks): on a two-node job the lost one; on a bigger job the
  candidates. A single-node job gets no note (there is no other node to name).
"""
from __future__ import annotations

import re
import socket
from typing import Dict, List, Optional, Tuple

import torch.distributed as dist

_TABLE: Optional[List[Tuple[str, str]]] = None  # rank -> (hostname, address)
_IP = re.compile(r"\[?(\d{1,3}(?:\.\d{1,3}){3})\]?(?::\d+)?")


def this_host() -> Tuple[str, str]:
    """(hostname, IPv4 address the hostname resolves to; '' when it does not resolve)."""
    name = socket.gethostname()
    try:
        addr = socket.gethostbyname(name)
    except OSError:
        addr = ""
    return name, addr


def record() -> List[Tuple[str, str]]:
    """Gather (hostname, address) of every rank of the default group (one collective, at start-up)."""
    global _TABLE
    me = this_host()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        _TABLE = [me]
        return _TABLE
    table: List[Optional[Tuple[str, str]]] = [None] * dist.get_world_size()
    dist.all_gather_object(table, me)
    _TABLE = [tuple(t) for t in table]
    return _TABLE


def table() -> Optional[List[Tuple[str, str]]]:
    return _TABLE


def _ranks(rs: List[int]) -> str:
    """[2, 3, 4, 7] -> 'ranks 2-4,7'."""
    parts, start = [], None
    for i, r in enumerate(rs):
        if start is None:
            start = r
        if i + 1 == len(rs) or rs[i + 1] != r + 1:
            parts.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ("rank " if len(rs) == 1 else "ranks ") + ",".join(parts)


def lost_node_note(error: object, tab: Optional[List[Tuple[str, str]]] = None,
                   me: Optional[Tuple[str, str]] = None) -> str:
    """'; lost node NAME (ranks a-b)' for an error message ('' when the table is unknown or the job has one
    host). ``tab`` / ``me`` default to the recorded table and this process's host (tests pass them)."""
    tab = tab if tab is not None else _TABLE
    if not tab:
        return ""
    me = me or this_host()
    by_host: Dict[str, List[int]] = {}
    for rank, (host, _) in enumerate(tab):
        by_host.setdefault(host, []).append(rank)
    if len(by_host) < 2:
        return ""
    addr_host = {addr: host for host, addr in tab if addr}
    named = [addr_host[a] for a in _IP.findall(str(error)) if a in addr_host and addr_host[a] != me[0]]
    if named:
        host = named[0]
        return f"; lost node {host} ({_ranks(by_host[host])})"
    others = [h for h in by_host if h != me[0]]
    desc = ", ".join(f"{h} ({_ranks(by_host[h])})" for h in others)
    return f"; lost node {desc}" if len(others) == 1 else f"; lost node: one of {desc}"
