"""Pure cost model of a vLLM engine: step time, KV blocks and the prefix cache.

Nothing here does I/O or touches the event loop, so every number can be unit-tested exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from simulator.config import SimConfig


def blocks_needed(tokens: int, block_size: int) -> int:
    """KV blocks that hold `tokens` tokens (the last block may be partly used)."""
    return -(-tokens // block_size)


def batch_slowdown(batch_size: int, max_num_seqs: int, slowdown_at_max: float) -> float:
    """Decode step multiplier: 1 for an empty batch, `slowdown_at_max` at `max_num_seqs`."""
    fill = min(batch_size, max_num_seqs) / max_num_seqs
    return 1.0 + (slowdown_at_max - 1.0) * fill


def step_time_ms(
    config: SimConfig,
    *,
    batch_size: int,
    new_requests: int,
    uncached_prefill_tokens: int,
    slow_token_ms: float = 0.0,
) -> float:
    """Duration of one engine step that emits one token to each of `batch_size` requests.

    `new_requests` were admitted in this step and need `uncached_prefill_tokens` prompt
    tokens computed (prefix-cache hits excluded); a step with no new request pays no prefill.
    """
    decode = config.decode_step_ms * batch_slowdown(
        batch_size, config.max_num_seqs, config.decode_slowdown_at_max_batch
    )
    prefill = 0.0
    if new_requests:
        prefill = config.prefill_base_ms + config.prefill_per_token_ms * uncached_prefill_tokens
    return decode + prefill + slow_token_ms


def block_hashes(
    tokens: Sequence[Hashable], block_size: int, extra_key: Hashable = None
) -> tuple[int, ...]:
    """Chained hashes of the full blocks of `tokens`, as vLLM's prefix cache keys them.

    Each hash covers its block and, through the previous hash, everything before it, so two
    prompts share a block hash exactly when they share the whole prefix up to that block.
    `extra_key` (e.g. the LoRA adapter) separates caches that must not be shared. Hashes use
    Python's `hash`, so they are stable within one process only, which is all a cache needs.
    """
    hashes: list[int] = []
    previous = hash(("sim-prefix-root", extra_key))
    for start in range(0, len(tokens) - block_size + 1, block_size):
        previous = hash((previous, tuple(tokens[start : start + block_size])))
        hashes.append(previous)
    return tuple(hashes)


def cached_prefix_tokens(matched_blocks: int, prompt_tokens: int, block_size: int) -> int:
    """Tokens a prefix-cache match lets the engine skip.

    Like vLLM, at least the last prompt token is always recomputed (its logits are needed),
    so a prompt that is entirely cached still computes its last, partly or fully hit, block.
    """
    if prompt_tokens <= 0:
        return 0
    usable_blocks = min(matched_blocks, (prompt_tokens - 1) // block_size)
    return usable_blocks * block_size


class PrefixCache:
    """LRU set of KV block hashes, bounded to `capacity_blocks` entries.

    A simplification of vLLM's cache: blocks are not pinned while in use and are not shared
    in the KV accounting; the cache only decides which prompt tokens skip prefill.
    """

    __slots__ = ("_blocks", "capacity_blocks")

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 0:
            raise ValueError("capacity_blocks must be >= 0")
        self.capacity_blocks = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def match(self, hashes: Sequence[int]) -> int:
        """Length of the cached leading run of `hashes`; those blocks become most recent."""
        matched = 0
        blocks = self._blocks
        for block_hash in hashes:
            if block_hash not in blocks:
                break
            blocks.move_to_end(block_hash)
            matched += 1
        return matched

    def insert(self, hashes: Sequence[int]) -> None:
        """Record `hashes` as computed (most recent), evicting least recent past capacity."""
        if self.capacity_blocks == 0:
            return
        blocks = self._blocks
        for block_hash in hashes:
            blocks[block_hash] = None
            blocks.move_to_end(block_hash)
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)
