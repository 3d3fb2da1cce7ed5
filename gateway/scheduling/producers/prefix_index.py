"""Prefix-cache affinity: which engine already holds the start of this prompt?

vLLM caches the KV of full prompt blocks keyed by a chained hash, so a request whose
prompt starts like an earlier one skips that prefill, but only on the engine that served
the earlier one. The gateway cannot see engine caches, so it keeps its own picture: it
hashes prompt text in fixed-size character blocks (a proxy for token blocks that needs no
tokenizer) and remembers which engine it sent each block to.

Hashes are blake2b, so every process and gateway replica computes the same ones.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

_MESSAGE_SEP = "\x1e"
_ROLE_SEP = "\x1f"


def prompt_text(body: Mapping[str, Any]) -> str:
    """Canonical text of what a request puts in front of the model, for prefix hashing.

    Chat: each message as ``"\\x1e" + role + "\\x1f" + text``, where text is a string
    content or the concatenated text parts. Completions: a string prompt, the first of a
    list of strings, or token ids joined by ",". Anything else is "": this never raises,
    because validation happens elsewhere and a bad body only loses its affinity.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        return "".join(_message_text(message) for message in messages)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            return first if all(isinstance(item, str) for item in prompt) else ""
        if all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
            return ",".join(str(item) for item in prompt)
    return ""


def _message_text(message: object) -> str:
    if not isinstance(message, Mapping):
        return ""
    role = message.get("role")
    text = _content_text(message.get("content"))
    return _MESSAGE_SEP + (role if isinstance(role, str) else "") + _ROLE_SEP + text


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = (
        part.get("text")
        for part in content
        if isinstance(part, Mapping) and part.get("type") == "text"
    )
    return "".join(text for text in texts if isinstance(text, str))


def block_hashes(text: str, block_chars: int, root: str) -> list[int]:
    """Chained 64-bit hashes of the full `block_chars`-character blocks of `text`.

    ``h(-1) = blake2b(root)`` and ``h(i) = blake2b(h(i-1) + block_i)`` over UTF-8 bytes
    (8-byte digests, read little-endian), so a hash stands for its block and everything
    before it: two prompts share hash i exactly when they share their first i+1 blocks.
    `root` keeps models and adapters apart. A trailing partial block is not hashed, as in
    vLLM, because it is not cached as a block either.
    """
    if block_chars < 1:
        raise ValueError("block_chars must be >= 1")
    full = len(text) - len(text) % block_chars
    blake2b = hashlib.blake2b  # this loop runs once per block of every prompt
    previous = blake2b(root.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    digests: list[bytes] = []
    if text.isascii():
        # One encode for the whole prompt; with one byte per character, slices line up.
        data = text.encode("ascii")
        for start in range(0, full, block_chars):
            previous = blake2b(previous + data[start : start + block_chars], digest_size=8).digest()
            digests.append(previous)
    else:
        for start in range(0, full, block_chars):
            block = text[start : start + block_chars].encode("utf-8", "surrogatepass")
            previous = blake2b(previous + block, digest_size=8).digest()
            digests.append(previous)
    # One unpack instead of an int.from_bytes call per block.
    return list(struct.unpack(f"<{len(digests)}Q", b"".join(digests)))


class PrefixIndex:
    """Per engine, an LRU of the block hashes the gateway believes that engine has cached.

    Each engine keeps at most `capacity_blocks` hashes; a hash not recorded for `ttl_s`
    seconds counts as evicted by the engine. Entries are kept in last-seen order (the
    clock never goes back), so expired ones are always the oldest and are dropped from
    the front whenever an engine is touched.
    """

    __slots__ = ("_clock", "_engines", "capacity_blocks", "ttl_s")

    def __init__(
        self,
        capacity_blocks: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be >= 1")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.capacity_blocks = capacity_blocks
        self.ttl_s = ttl_s
        self._clock = clock
        self._engines: dict[str, OrderedDict[int, float]] = {}

    def record(self, engine: str, hashes: Sequence[int]) -> None:
        """`hashes` (one prompt's chain) are now cached on `engine`.

        They are refreshed back to front, so the first block ends most recent: like vLLM,
        which frees a request's blocks tail first, the tail of a long prompt is evicted
        before its head, and the head is what the next prompt can reuse.
        """
        now = self._clock()
        blocks = self._engines.get(engine)
        if blocks is None:
            blocks = self._engines[engine] = OrderedDict()
        else:
            self._expire(blocks, now)
        for block_hash in reversed(hashes):
            blocks[block_hash] = now
            blocks.move_to_end(block_hash)
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)
        if not blocks:
            del self._engines[engine]

    def match(self, hashes: Sequence[int], engines: Iterable[str]) -> dict[str, int]:
        """For each engine, how many leading `hashes` it holds (0 when none).

        Matching does not refresh recency: only a request actually sent refreshes, via
        :meth:`record`.
        """
        now = self._clock()
        matched: dict[str, int] = {}
        for engine in engines:
            blocks = self._live(engine, now)
            run = 0
            if blocks is not None:
                for block_hash in hashes:
                    if block_hash not in blocks:
                        break
                    run += 1
            matched[engine] = run
        return matched

    def forget(self, engine: str) -> None:
        """The engine restarted, so its cache is empty."""
        self._engines.pop(engine, None)

    def size(self, engine: str) -> int:
        """Unexpired blocks remembered for `engine`."""
        blocks = self._live(engine, self._clock())
        return 0 if blocks is None else len(blocks)

    def _live(self, engine: str, now: float) -> OrderedDict[int, float] | None:
        blocks = self._engines.get(engine)
        if blocks is None:
            return None
        self._expire(blocks, now)
        if not blocks:
            del self._engines[engine]
            return None
        return blocks

    def _expire(self, blocks: OrderedDict[int, float], now: float) -> None:
        deadline = now - self.ttl_s
        while blocks:
            oldest = next(iter(blocks.values()))
            if oldest > deadline:
                break
            blocks.popitem(last=False)
