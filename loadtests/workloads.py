"""Workload specs and the request bodies they produce, deterministic from a seed.

A workload is a pydantic model with a ``kind`` (``random``, ``shared_prefix``,
``multi_turn``, ``lora_mix``); ``RequestSource(workload, seed)`` turns it into requests.
Prompts are words from ``WORDS``, 200 common lowercase English words that are one token
each (with their leading space) in GPT- and Llama-style tokenizers, so prompt lengths land
close to the requested token counts; the real counts come from the server's ``usage``.

Each random stream (bodies, LoRA choice, repeats) has its own ``random.Random`` seeded from
the run's seed, so adding a LoRA mix or repeats does not change the prompts themselves.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    model_validator,
)

_WORD_TEXT = """
the of and to in is was for on are with as at be by this had not but from or have an they
which one you were all we her she there would their will when who him been has more if no
out do so can what up said about other into than its time only could new them man some
these then two first may any like now my such make over our even most me state after also
made many did must before back see through way where get much go well your know should
down work year because come people just say each those take day good how long own too
little use us very great still men here life both between old under last never place same
another think house while high right might came off find states since used give against
three himself part small few world again every end hand let fact left best found often
once city near light line kind name four five six home water room mother area money story
young month lot book eye job word business issue side head service friend father power
hour game member law
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())
REPEAT_HISTORY = 1024
"""Repeats copy one of the last this many distinct requests."""


def _as_range(value: object) -> object:
    return (value, value) if isinstance(value, int) else value


TokenRange = Annotated[tuple[PositiveInt, PositiveInt], BeforeValidator(_as_range)]
"""``[min, max]`` tokens, inclusive (a single number means exactly that many)."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class _Common(_Spec):
    endpoint: Literal["chat", "completions"] = "chat"
    """``chat`` sends ``messages``; ``completions`` sends ``prompt``."""
    model: Annotated[str, Field(min_length=1)] = "sim-model"
    ignore_eos: bool = True
    """Send vLLM's ``ignore_eos`` so every output is exactly ``max_tokens`` long."""
    temperature: Annotated[float, Field(ge=0.0)] = 0.0
    repeat_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Share of requests that repeat an earlier identical body (response-cache traffic)."""

    @property
    def path(self) -> str:
        """The endpoint's URL path."""
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"


class RandomWorkload(_Common):
    """Independent prompts of random length."""

    kind: Literal["random"] = "random"
    input_len: TokenRange = (256, 256)
    output_len: TokenRange = (128, 128)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        for name, (low, high) in (("input_len", self.input_len), ("output_len", self.output_len)):
            if low > high:
                raise ValueError(f"{name}: min {low} > max {high}")
        return self


class SharedPrefixWorkload(_Common):
    """``n_prefixes * m_suffixes`` prompts: every prefix with its own suffixes, shuffled."""

    kind: Literal["shared_prefix"] = "shared_prefix"
    n_prefixes: PositiveInt = 8
    m_suffixes: PositiveInt = 16
    prefix_len: PositiveInt = 512
    suffix_len: PositiveInt = 64
    output_len: PositiveInt = 128


class MultiTurnWorkload(_Common):
    """``users`` conversations in parallel; each turn carries every earlier turn, answers
    included, so a conversation's next turn is sent only after its previous one finished.
    With ``repeat_rate``, that share of conversations replays an earlier one's messages."""

    kind: Literal["multi_turn"] = "multi_turn"
    users: PositiveInt = 8
    turns: PositiveInt = 4
    first_len: PositiveInt = 256
    """Tokens in each conversation's first user message."""
    turn_len: PositiveInt = 64
    """Tokens in every later user message."""
    output_len: PositiveInt = 128
    system_len: NonNegativeInt = 0
    """Tokens of a system prompt shared by every conversation (0: no system message). It
    opens every request (chat: a ``system`` message; completions: the prompt's first line)."""
    session_user: bool = False
    """Send each conversation's id as OpenAI's ``user`` field, the key session-affinity
    routers use."""


BaseWorkload = Annotated[
    RandomWorkload | SharedPrefixWorkload | MultiTurnWorkload, Field(discriminator="kind")
]


class LoraMixWorkload(_Spec):
    """Another workload with ``model`` drawn per request (per conversation for multi-turn);
    the inner workload's own ``model`` is not used."""

    kind: Literal["lora_mix"] = "lora_mix"
    workload: BaseWorkload
    models: dict[str, Annotated[float, Field(gt=0.0)]] = Field(min_length=1)
    """Model (base or adapter name) → relative weight."""
    repeat_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0

    @model_validator(mode="after")
    def _one_repeat_rate(self) -> Self:
        if self.repeat_rate and self.workload.repeat_rate:
            raise ValueError("set repeat_rate on the lora_mix or on its workload, not both")
        return self


Workload = Annotated[
    RandomWorkload | SharedPrefixWorkload | MultiTurnWorkload | LoraMixWorkload,
    Field(discriminator="kind"),
]


@dataclass(frozen=True, slots=True)
class Request:
    """One request to send: its path, JSON body (read-only) and what the run records."""

    path: str
    body: dict[str, Any]
    model: str
    output_len: int
    session: str | None = None
    turn: int | None = None


def words(rng: random.Random, count: int) -> str:
    """``count`` words from ``WORDS`` joined by spaces (about ``count`` tokens)."""
    return " ".join(rng.choices(WORDS, k=count))


def make_body(
    spec: _Common, model: str, turns: list[str], output_len: int, *,
    system: str | None = None, user: str | None = None,
) -> dict[str, Any]:
    """A streamed request body; ``turns`` alternate user, assistant, ..., user, after an
    optional ``system`` prompt; ``user`` is OpenAI's end-user id field."""
    body: dict[str, Any] = {"model": model}
    if spec.endpoint == "chat":
        roles = ("user", "assistant")
        messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        body["messages"] = messages
    else:
        body["prompt"] = "\n".join(turns if system is None else [system, *turns])
    body |= {
        "max_tokens": output_len,
        "temperature": spec.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if spec.ignore_eos:
        body["ignore_eos"] = True
    if user is not None:
        body["user"] = user
    return body


@dataclass(eq=False)
class _Conversation:
    session: str
    model: str
    messages: list[str]
    """The user messages of every turn, generated up front."""
    history: list[str] = field(default_factory=list)


class RequestSource:
    """The requests of a workload, in order.

    ``take()`` returns the next request that can be sent now, or None. Without multi-turn,
    every request is ready at once and None means the workload is used up (``random`` never
    is). For multi-turn, a conversation's next turn is ready only after ``complete()`` was
    called with the answer to its previous turn; a failed turn (``answer=None``) ends it.
    """

    def __init__(self, workload: Workload, seed: int | str) -> None:
        self._mix: dict[str, float] | None = None
        inner: RandomWorkload | SharedPrefixWorkload | MultiTurnWorkload
        if isinstance(workload, LoraMixWorkload):
            inner, self._mix = workload.workload, workload.models
            self._repeat_rate = workload.repeat_rate or inner.repeat_rate
        else:
            inner, self._repeat_rate = workload, workload.repeat_rate
        self._spec = inner
        self._path = inner.path
        self._rng = random.Random(f"{seed}:bodies")
        self._lora_rng = random.Random(f"{seed}:lora")
        self._repeat_rng = random.Random(f"{seed}:repeat")
        self._history: deque[Request] = deque(maxlen=REPEAT_HISTORY)
        self._fresh: Iterator[Request] | None = None
        self._fresh_done = False
        self._turns: MultiTurnWorkload | None = None
        self._system: str | None = None
        self._ready: deque[_Conversation] = deque()
        self._conversations: dict[str, _Conversation] = {}
        self._in_flight = 0
        if isinstance(inner, MultiTurnWorkload):
            self._turns = inner
            if inner.system_len:  # its own stream: the conversations do not change with it
                self._system = words(random.Random(f"{seed}:system"), inner.system_len)
            self._start_conversations(inner)
        else:
            self._fresh = self._fresh_requests(inner)

    @property
    def exhausted(self) -> bool:
        """True when no request will ever be ready again."""
        if self._fresh is not None:
            return self._fresh_done
        return not self._ready and self._in_flight == 0

    def take(self) -> Request | None:
        """The next request to send, or None when none is ready (see ``exhausted``)."""
        if self._fresh is None:
            return self._next_turn()
        if self._fresh_done:
            return None
        if self._history and self._repeat_rng.random() < self._repeat_rate:
            return self._repeat_rng.choice(self._history)
        request = next(self._fresh, None)
        self._fresh_done = request is None
        if request is not None:
            self._history.append(request)
        return request

    def complete(self, request: Request, answer: str | None) -> None:
        """Report a finished request; for multi-turn ``answer`` is the assistant text."""
        if request.session is None:
            return
        self._in_flight -= 1
        conversation = self._conversations[request.session]
        if answer is None:
            return
        conversation.history += [conversation.messages[len(conversation.history) // 2], answer]
        if len(conversation.history) // 2 < len(conversation.messages):
            self._ready.append(conversation)

    def _model(self) -> str:
        if self._mix is None:
            return self._spec.model
        return self._lora_rng.choices(list(self._mix), list(self._mix.values()))[0]

    def _request(self, turns: list[str], output_len: int) -> Request:
        model = self._model()
        body = make_body(self._spec, model, turns, output_len)
        return Request(self._path, body, model, output_len)

    def _fresh_requests(self, spec: RandomWorkload | SharedPrefixWorkload) -> Iterator[Request]:
        rng = self._rng
        if isinstance(spec, RandomWorkload):
            while True:
                prompt = words(rng, rng.randint(*spec.input_len))
                yield self._request([prompt], rng.randint(*spec.output_len))
        prefixes = [words(rng, spec.prefix_len) for _ in range(spec.n_prefixes)]
        prompts = [
            f"{prefix} {words(rng, spec.suffix_len)}"
            for prefix in prefixes
            for _ in range(spec.m_suffixes)
        ]
        rng.shuffle(prompts)
        for prompt in prompts:
            yield self._request([prompt], spec.output_len)

    def _start_conversations(self, spec: MultiTurnWorkload) -> None:
        for user in range(spec.users):
            if user and self._repeat_rng.random() < self._repeat_rate:
                original = self._conversations[f"user-{self._repeat_rng.randrange(user)}"]
                model, messages = original.model, original.messages
            else:
                model = self._model()
                messages = [words(self._rng, spec.first_len)]
                messages += [words(self._rng, spec.turn_len) for _ in range(spec.turns - 1)]
            conversation = _Conversation(f"user-{user}", model, messages)
            self._conversations[conversation.session] = conversation
            self._ready.append(conversation)

    def _next_turn(self) -> Request | None:
        if not self._ready or self._turns is None:
            return None
        conversation, output_len = self._ready.popleft(), self._turns.output_len
        turn = len(conversation.history) // 2
        turns = [*conversation.history, conversation.messages[turn]]
        user = conversation.session if self._turns.session_user else None
        body = make_body(self._spec, conversation.model, turns, output_len,
                         system=self._system, user=user)
        self._in_flight += 1
        return Request(self._path, body, conversation.model, output_len, conversation.session, turn)
