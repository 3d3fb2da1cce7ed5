"""Word-level tokenization (`/tokenize`, `/detokenize`) and embeddings (`/v1/embeddings`).

Tokens are what the simulator counts everywhere else: a prompt is `<s>` (with
`add_special_tokens`, the default) plus its whitespace-split words; chat messages are
the chat prompt's tokens (see `simulator.protocol`). Ids are stable across simulators:
the special tokens and the words the simulator generates have small fixed ids, any other
word a hash of it. `/detokenize` knows the fixed ids and every word this simulator has
tokenized; other ids are a 400.

An embedding is a deterministic unit vector of `EMBEDDING_DIM` floats from a hash of the
seed, the model and the input, sent as a list or (`encoding_format: "base64"`, what the
`openai` client asks for) as base64 of little-endian float32.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

import orjson

from simulator.protocol import WORDS, SimError, chat_tokens

SPECIAL = ("<s>", "</s>", "<|im_start|>", "<|im_end|>", "\n")
FIXED: dict[str, int] = {t: i for i, t in enumerate((*SPECIAL, *(w.decode().strip()
                                                                for w in WORDS)))}
HASHED_BASE = 1000
EMBEDDING_DIM = 32


class Vocabulary:
    """Token ids of words; remembers the hashed ones it has given out."""

    def __init__(self) -> None:
        self._learned: dict[int, str] = {}

    def id_of(self, word: str) -> int:
        fixed = FIXED.get(word)
        if fixed is not None:
            return fixed
        digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
        token = HASHED_BASE + int.from_bytes(digest, "little") % (2**31 - HASHED_BASE)
        self._learned[token] = word
        return token

    def word_of(self, token: int) -> str | None:
        if 0 <= token < len(FIXED):
            return _BY_ID[token]
        return self._learned.get(token)


_BY_ID = list(FIXED)


def tokenize(body: dict[str, Any], vocabulary: Vocabulary, max_model_len: int) -> bytes:
    """The `/tokenize` answer for a `prompt` or `messages` body."""
    if isinstance(body.get("messages"), list):
        words: list[str] = chat_tokens(body)[0]
    elif isinstance(body.get("prompt"), str):
        special = body.get("add_special_tokens", True) is not False
        words = ["<s>"] * special + body["prompt"].split()
    else:
        raise SimError(400, "BadRequestError", "`prompt` or `messages` is required", "prompt")
    tokens = [vocabulary.id_of(word) for word in words]
    strs = words if body.get("return_token_strs") else None
    return orjson.dumps({"count": len(tokens), "max_model_len": max_model_len,
                         "tokens": tokens, "token_strs": strs})


def detokenize(body: dict[str, Any], vocabulary: Vocabulary) -> bytes:
    """The `/detokenize` answer: the tokens' words joined by spaces."""
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise SimError(400, "BadRequestError", "`tokens` must be a list of ints", "tokens")
    words: list[str] = []
    for token in tokens:
        word = vocabulary.word_of(token)
        if word is None:
            raise SimError(400, "BadRequestError", f"token id {token} is out of vocabulary",
                           "tokens")
        words.append(word)
    return orjson.dumps({"prompt": " ".join(words)})


def embeddings(body: dict[str, Any], model: str, seed: int, request_id: str,
               created: int) -> bytes:
    """The `/v1/embeddings` answer, one vector per input."""
    given = body.get("input")
    inputs: list[Any]
    if isinstance(given, str) or (isinstance(given, list) and given
                                  and all(type(t) is int for t in given)):
        inputs = [given]
    elif isinstance(given, list) and given and all(
            isinstance(i, str) or (isinstance(i, list) and all(type(t) is int for t in i))
            for i in given):
        inputs = given
    else:
        raise SimError(400, "BadRequestError", "`input` must be a string, a list of "
                       "strings, or token ids", "input")
    dimensions = body.get("dimensions") or EMBEDDING_DIM
    if type(dimensions) is not int or not 1 <= dimensions <= EMBEDDING_DIM:
        raise SimError(400, "BadRequestError", f"dimensions must be 1..{EMBEDDING_DIM}",
                       "dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        tokens += len(item) if isinstance(item, list) else 1 + len(item.split())
        vector = _vector(orjson.dumps([seed, model, item]), dimensions)
        encoded: list[float] | str = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"index": index, "object": "embedding", "embedding": encoded})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
             "prompt_tokens_details": None}
    return orjson.dumps({"id": request_id, "object": "list", "created": created,
                         "model": model, "data": data, "usage": usage})


def _vector(key: bytes, dimensions: int) -> list[float]:
    raw = b"".join(hashlib.blake2b(key + bytes([i]), digest_size=64).digest()
                   for i in range(math.ceil(dimensions * 2 / 64)))
    values = [int.from_bytes(raw[2 * i:2 * i + 2], "little") / 32767.5 - 1.0
              for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
