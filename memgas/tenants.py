"""The users a store holds in memory: every user of an in-memory or folder store, and, for a durable
store (memgas.db), only those touched lately. A user's state (vectors, ANN index, BM25, graph) is
read from the database on first use and kept in a least-recently-used cache bounded by a count and
by an estimate of its bytes, so opening a store reads no user's vectors and a store of ten thousand
users holds only the ones in use. An evicted user is simply read again next time: the database is
the truth, the cache only a copy (`MemoryStore._apply` keeps loaded users in step with other
processes' commits)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from memgas.memory import Memory

NODE_OVERHEAD = 512  # bytes per node beyond its vector: lists, index, adjacency, BM25 share (rough)


def memory_from(got: dict) -> Memory | None:
    """A user's memory from `Database.read_user`'s rows (None: the user has no session)."""
    if not got["sessions"]:
        return None
    mem = Memory()
    mem.load_nodes(got["sessions"], got["gran"], got["owner"], got["edges"], got["emb"], got["keys"], got["floors"])
    return mem


def memory_bytes(mem: Memory) -> int:
    """An estimate of what one user's memory costs in RAM (vectors dominate)."""
    return int(mem._buf.nbytes + NODE_OVERHEAD * len(mem.node_gran) + 64 * len(mem.edges))


class UserCache:
    """A mapping user id -> Memory. With a `loader` (a durable store), missing users are loaded on
    access and the least recently used are dropped past `max_users` or `max_bytes`; without one
    (an in-memory store, whose memory exists nowhere else) nothing is ever dropped."""

    def __init__(self, loader: Callable[[str], Memory | None] | None = None, max_users=1024, max_bytes=1 << 30):
        self._d: OrderedDict[str, Memory] = OrderedDict()
        self._loader = loader
        self.max_users, self.max_bytes = max_users, max_bytes
        self.loads = 0  # users read from the database (a cold access)

    # ---- access: a miss loads (durable store), a hit refreshes recency
    def get(self, uid: str, default=None) -> Memory | None:
        if uid in self._d:
            self._d.move_to_end(uid)
            return self._d[uid]
        if self._loader is None:
            return default
        mem = self._loader(uid)
        self.loads += 1
        if mem is None:
            return default
        self._d[uid] = mem
        self._evict(keep=uid)
        return mem

    def __getitem__(self, uid: str) -> Memory:
        mem = self.get(uid)
        if mem is None:
            raise KeyError(uid)
        return mem

    def __setitem__(self, uid: str, mem: Memory) -> None:
        self._d[uid] = mem
        self._d.move_to_end(uid)
        self._evict(keep=uid)

    def pop(self, uid: str, default=None):
        return self._d.pop(uid, default)

    def __contains__(self, uid) -> bool:
        return self.get(uid) is not None

    # ---- what is in memory now (never loads)
    def loaded(self) -> list[str]:
        return list(self._d)

    def peek(self, uid: str) -> Memory | None:
        return self._d.get(uid)

    def items(self):
        return self._d.items()

    def values(self):
        return self._d.values()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._d))

    def __len__(self) -> int:
        return len(self._d)

    def bytes(self) -> int:
        return sum(memory_bytes(m) for m in self._d.values())

    def _evict(self, keep: str) -> None:
        if self._loader is None:
            return
        while len(self._d) > self.max_users or (len(self._d) > 1 and self.bytes() > self.max_bytes):
            oldest = next(iter(self._d))
            if oldest == keep:
                break
            del self._d[oldest]
