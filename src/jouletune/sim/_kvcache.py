"""The KV-cache block pool with prefix caching, as vLLM V1's `BlockPool` keeps it.

vLLM 0.24 serves with automatic prefix caching on by default: a full 16-token block of a
prompt is registered under a chained hash of its tokens, a finished request's blocks go to
the tail of a free queue still holding their KV, and a later request whose prompt starts
with the same blocks reuses them instead of prefilling them again. Allocation takes blocks
from the head of the free queue (least recently freed), evicting whatever they cached.
A request frees its blocks last-first, so a request's tail blocks are evicted before its
prefix (vllm/v1/core/block_pool.py, kv_cache_manager.py).

This matters for fidelity: `jouletune bench --seed S` draws prompt tokens from one random
stream, so the first half of a 1024-token prompt equals a whole 512-token prompt of an
earlier run with the same seed, and vLLM served those prefixes from its cache (the H100
logs report the hit rate).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

__all__ = ["BlockPool", "prompt_block_hashes"]

# vLLM's default KV block size on CUDA (cache_config_info block_size="16" in the exposition).
BLOCK_SIZE = 16


def prompt_block_hashes(tokens: Sequence[Hashable]) -> tuple[int, ...]:
    """Chained hashes of the full `BLOCK_SIZE`-token blocks of a prompt, as vLLM keys them.

    Each block's hash covers its tokens and the previous block's hash, so equal hashes mean
    equal prefixes. Python's `hash` is enough: the cache lives inside one process.
    """
    hashes: list[int] = []
    prev = 0
    for start in range(0, len(tokens) - BLOCK_SIZE + 1, BLOCK_SIZE):
        prev = hash((prev, tuple(tokens[start : start + BLOCK_SIZE])))
        hashes.append(prev)
    return tuple(hashes)


class BlockPool:
    """Fixed pool of KV blocks: reference counts, an LRU free queue and a hash → block map.

    Args:
        num_blocks: blocks in the pool.
        enable_caching: keep freed blocks' contents for reuse (vLLM's prefix caching).
    """

    def __init__(self, *, num_blocks: int, enable_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, int] = {}  # block -> hash of the tokens it holds
        self._block_of: dict[int, int] = {}  # hash -> block
        # Free blocks in eviction order (head first); values unused.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def free_blocks(self) -> int:
        """Blocks no request holds (cached or empty): what an allocation may take."""
        return len(self._free)

    def cached_prefix(self, block_hashes: tuple[int, ...], max_blocks: int) -> list[int]:
        """Blocks holding the longest cached prefix of `block_hashes`, at most `max_blocks`."""
        if not self.enable_caching:
            return []
        hits: list[int] = []
        for block_hash in block_hashes[:max_blocks]:
            block = self._block_of.get(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def evictable(self, blocks: list[int]) -> int:
        """How many of `blocks` sit in the free queue (reusing them takes them out of it)."""
        return sum(1 for block in blocks if self._refs[block] == 0)

    def touch(self, blocks: list[int]) -> None:
        """Take a reference on cached blocks a new request reuses."""
        for block in blocks:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1

    def allocate(self, count: int) -> list[int] | None:
        """`count` blocks from the head of the free queue (evicting their cache); None if short."""
        if count > len(self._free):
            return None
        taken = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            old = self._hash_of.pop(block, None)
            if old is not None and self._block_of.get(old) == block:
                del self._block_of[old]
            self._refs[block] = 1
            taken.append(block)
        return taken

    def register(self, block: int, block_hash: int) -> None:
        """Record that `block` now holds the tokens hashed as `block_hash`."""
        if not self.enable_caching or block in self._hash_of:
            return
        self._hash_of[block] = block_hash
        self._block_of.setdefault(block_hash, block)

    def free(self, blocks: list[int]) -> None:
        """Drop a request's references, last block first (its prefix is evicted last)."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            assert self._refs[block] >= 0, f"block {block} freed twice"
            if self._refs[block] == 0:
                self._free[block] = None
