"""Whisper speech recognition: log-mel -> encoder -> text decoder (cross-attention K/V computed once, at
prefill) -> tokens, as transformers' `WhisperForConditionalGeneration.generate` on <= 30-s windows.

    config = Config.from_hf(hf_config, generation_config)      # config.json / generation_config.json dicts
    new = generate(params, config, {"input_features": f}, max_new_tokens=100)     # b n, pad after EOS

The prompt is `[decoder_start] + forced ids + [<|notimestamps|>]` (English-only checkpoints: no language or
task tokens); `begin_suppress_tokens` are masked for the first generated token, `suppress_tokens` at every
step; greedy or temperature sampling; at most `max_length` (448) positions in all. Spec:
shared/spec/whisper_decoder.md 7.

    new = generate(params, config, {"input_features": f}, timestamps=True)   # <|t|> text ... <|t|> ...

With timestamps the prompt drops <|notimestamps|>, the timestamp rules (transformers'
WhisperTimeStampLogitsProcessor) run inside the device loop on the token history the step state keeps, and
transformers' seek loop re-decodes a window from its last complete segment (`decode_passes`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.inference import loop
from omni_jax.inference.engine import Step
from omni_jax.inference.sampling import GREEDY, Sampling
from omni_jax.models import whisper_decoder, whisper_encoder
from omni_jax.models.audio_common import hf_get


def _ids(value) -> tuple[int, ...]:
    return () if value is None else tuple(int(i) for i in value)


@dataclasses.dataclass(frozen=True)
class Generation:
    """The generation settings transformers' Whisper `generate` reads (generation_config.json)."""

    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int
    no_timestamps_token_id: int | None = None
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    forced_ids: tuple[int, ...] = ()  # forced_decoder_ids values at positions 1, 2, ...
    max_length: int = 448
    max_initial_timestamp_index: int | None = None  # the first timestamp is at most <|0.00|> + this

    @classmethod
    def from_hf(cls, generation: dict, hf_config: dict) -> Generation:
        """From a generation_config.json dict, falling back to the model config (as transformers does)."""
        get = {**{k: v for k, v in hf_config.items() if v is not None}, **generation}.get
        if get("is_multilingual"):
            raise ValueError(
                "multilingual Whisper checkpoints (language detection, language / task tokens) are not "
                "supported yet; English-only checkpoints (*.en) are"
            )
        eos = get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        forced = sorted(get("forced_decoder_ids") or ())
        if [i for i, _ in forced] != list(range(1, len(forced) + 1)):
            raise ValueError(f"forced_decoder_ids {forced} must force positions 1, 2, ... in order")
        return cls(
            decoder_start_token_id=get("decoder_start_token_id"),
            eos_token_id=eos,
            pad_token_id=get("pad_token_id") if get("pad_token_id") is not None else eos,
            no_timestamps_token_id=get("no_timestamps_token_id"),
            suppress_tokens=_ids(get("suppress_tokens")),
            begin_suppress_tokens=_ids(get("begin_suppress_tokens")),
            forced_ids=tuple(int(t) for _, t in forced),
            max_length=min(get("max_length") or 448, hf_get(hf_config, "max_target_positions")),
            max_initial_timestamp_index=get("max_initial_timestamp_index"),
        )

    @property
    def prompt(self) -> tuple[int, ...]:
        """The decoder prompt of a plain-text pass (transformers' `_retrieve_init_tokens`)."""
        ids = (self.decoder_start_token_id, *self.forced_ids)
        if self.no_timestamps_token_id is not None and ids[-1] != self.no_timestamps_token_id:
            ids += (self.no_timestamps_token_id,)
        return ids

    @property
    def timestamp_prompt(self) -> tuple[int, ...]:
        """The decoder prompt of a timestamped pass: the plain one without its final <|notimestamps|>."""
        return self.prompt[:-1] if self.prompt[-1] == self.no_timestamps_token_id else self.prompt

    @property
    def timestamp_begin(self) -> int | None:
        """The id of <|0.00|>, the first timestamp (the one after <|notimestamps|>); None without it."""
        return None if self.no_timestamps_token_id is None else self.no_timestamps_token_id + 1


@dataclasses.dataclass(frozen=True)
class Config:
    encoder: whisper_encoder.WhisperEncoderConfig
    decoder: whisper_decoder.WhisperDecoderConfig
    generation: Generation

    def __post_init__(self):
        if self.encoder.d_model != self.decoder.d_model:
            raise ValueError(f"encoder width {self.encoder.d_model} != decoder width {self.decoder.d_model}")
        g = self.generation
        ids = (*g.prompt, g.eos_token_id, g.pad_token_id, *g.suppress_tokens, *g.begin_suppress_tokens)
        if bad := sorted({i for i in ids if not 0 <= i < self.decoder.vocab_size}):
            raise ValueError(f"generation token ids {bad} outside the vocabulary ({self.decoder.vocab_size})")

    @classmethod
    def from_hf(cls, cfg: dict, generation: dict | None = None) -> Config:
        """From config.json and generation_config.json dicts (None: what transformers derives from the
        model config alone)."""
        return cls(
            encoder=whisper_encoder.WhisperEncoderConfig.from_hf(cfg),
            decoder=whisper_decoder.WhisperDecoderConfig.from_hf(cfg),
            generation=Generation.from_hf(generation or {}, cfg),
        )


def check_timestamps(config: Config) -> None:
    """Raise unless the checkpoint has timestamp tokens (transformers needs no_timestamps_token_id)."""
    g, vocab = config.generation, config.decoder.vocab_size
    if g.no_timestamps_token_id is None:
        raise ValueError(
            "timestamps need a checkpoint with timestamp tokens: its generation config has no "
            "no_timestamps_token_id"
        )
    if g.timestamp_begin >= vocab:
        raise ValueError(
            f"timestamps need timestamp tokens after <|notimestamps|> ({g.no_timestamps_token_id}), but the "
            f"vocabulary ends at id {vocab - 1}"
        )


def param_specs(config: Config) -> dict:
    parts = (("encoder", whisper_encoder), ("decoder", whisper_decoder))
    return {name: module.param_specs(getattr(config, name)) for name, module in parts}


# ---------------------------------------------------------------- timestamp rules

NONE = -1  # no token yet


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class History:
    """What the timestamp rules read of each row's generated tokens."""

    last_two: jax.Array  # b 2 int32: the penultimate and the last token (NONE before there are two)
    last_timestamp: jax.Array  # b int32: the last timestamp id generated (NONE before the first)

    @classmethod
    def empty(cls, batch: int) -> History:
        return cls(jnp.full((batch, 2), NONE, jnp.int32), jnp.full((batch,), NONE, jnp.int32))

    def push(self, token: jax.Array, timestamp_begin: int) -> History:
        """The history after each row's next token (b)."""
        last_two = jnp.stack([self.last_two[:, 1], token], axis=1)
        return History(last_two, jnp.where(token >= timestamp_begin, token, self.last_timestamp))


def timestamp_rules(logits: jax.Array, g: Generation, history: History, first: bool) -> jax.Array:
    """transformers' WhisperTimeStampLogitsProcessor on b vocab float32 logits: no <|notimestamps|>;
    timestamps in pairs (after a pair only text, after text + timestamp no text); timestamps never decrease;
    the first token a timestamp <= <|0.00|> + max_initial_timestamp_index; and text banned when the
    timestamps' total probability beats every text token's."""
    begin, vocab = g.timestamp_begin, logits.shape[-1]
    ids = jnp.arange(vocab)
    is_stamp = ids >= begin  # vocab
    penultimate, last = history.last_two[:, 0], history.last_two[:, 1]
    after_stamp = last >= begin  # b
    after_pair = after_stamp & ((penultimate >= begin) | (penultimate == NONE))
    closing = after_stamp & ~after_pair  # text, timestamp: the next one pairs it
    floor = jnp.where(
        history.last_timestamp == NONE, begin, history.last_timestamp + (~closing).astype(jnp.int32)
    )  # b: the lowest timestamp allowed
    banned = (ids == g.no_timestamps_token_id)[None] | (is_stamp & (ids < floor[:, None]))
    banned |= (after_pair[:, None] & is_stamp) | (closing[:, None] & (ids < g.eos_token_id))
    if first:
        banned |= ~is_stamp[None]
        if g.max_initial_timestamp_index is not None:
            banned |= (ids > begin + g.max_initial_timestamp_index)[None]
    logits = jnp.where(banned, -jnp.inf, logits)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    stamps = jax.nn.logsumexp(logprobs[:, begin:], axis=-1)
    text = logprobs[:, :begin].max(axis=-1)
    return jnp.where((stamps > text)[:, None] & ~is_stamp, -jnp.inf, logits)


# ---------------------------------------------------------------- the step model


class Prompt(NamedTuple):
    features: jax.Array  # b mel frames
    ids: jax.Array  # b n (the same prompt on every row)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class State:
    decoder: whisper_decoder.Cache
    history: History | None  # with timestamps only


@dataclasses.dataclass(frozen=True)
class Transcriber:
    """Whisper as an omni_jax.inference.engine StepModel: prefill encodes the audio, fills the cross K/V and
    runs the prompt; each step decodes one token per row. The logits come out processed as transformers'
    Whisper processors do (begin-suppressed tokens at the first step, suppressed tokens, and with
    `timestamps` the timestamp rules over the history the state keeps)."""

    config: Config
    timestamps: bool = False

    def init_cache(self, params: dict, batch: int, length: int) -> State:
        frames = self.config.encoder.max_source_positions
        dtype = params["decoder"]["embed"].dtype
        cache = whisper_decoder.init_cache(self.config.decoder, batch, length, frames, dtype)
        return State(cache, History.empty(batch) if self.timestamps else None)

    def prefill(self, params: dict, prompt: Prompt, state: State) -> Step:
        c = self.config
        with jax.named_scope("encoder"):
            encoded = whisper_encoder.forward(params["encoder"], c.encoder, prompt.features)  # b frames d
        cache = whisper_decoder.with_encoder(params["decoder"], c.decoder, encoded, state.decoder)
        logits, cache = whisper_decoder.forward(params["decoder"], c.decoder, prompt.ids, cache)
        return Step(self._process(logits, state.history, True), State(cache, state.history), {})

    def step(self, params: dict, inputs: jax.Array, state: State) -> Step:
        logits, cache = whisper_decoder.forward(params["decoder"], self.config.decoder, inputs, state.decoder)
        history = state.history
        if self.timestamps:
            history = history.push(inputs[:, 0], self.config.generation.timestamp_begin)
        return Step(self._process(logits, history, False), State(cache, history), {})

    def next_input(self, params: dict, tokens: jax.Array) -> jax.Array:
        return tokens[:, None]

    def _process(self, logits: jax.Array, history: History | None, first: bool) -> jax.Array:
        """b vocab float32 logits after the Whisper processors, in transformers' order."""
        g = self.config.generation
        logits = logits.astype(jnp.float32)
        suppress = g.suppress_tokens + (g.begin_suppress_tokens if first else ())
        if suppress:
            logits = logits.at[:, jnp.asarray(suppress)].set(-jnp.inf)
        if self.timestamps:
            with jax.named_scope("timestamp_rules"):
                logits = timestamp_rules(logits, g, history, first)
        return logits


def _loop_args(
    params, config: Config, inputs: dict, max_new_tokens, eos_ids, pad_id, sampling, seed, timestamps
):  # fmt: skip
    """(prompt, keyword arguments of the engine's loops), checked before anything runs."""
    features = inputs["input_features"]
    whisper_encoder.check_inputs(config.encoder, features, None, params["encoder"]["conv1"]["kernel"].dtype)
    g = config.generation
    if timestamps:
        check_timestamps(config)
    prompt = g.timestamp_prompt if timestamps else g.prompt
    n = len(prompt)
    room = g.max_length - n
    max_new = room if max_new_tokens is None else max_new_tokens
    if not 1 <= max_new <= room:
        raise ValueError(
            f"max_new_tokens {max_new} outside 1..{room}: the {n} prompt tokens and the new ones must fit "
            f"max_length {g.max_length}"
        )
    ids = np.tile(np.asarray(prompt, np.int32), (np.shape(features)[0], 1))
    options = dict(
        max_new_tokens=max_new,
        length=n + max_new,
        sampling=sampling,
        eos_ids=tuple(eos_ids or (g.eos_token_id,)),
        pad_id=g.pad_token_id if pad_id is None else pad_id,
        seed=seed,
    )
    return Prompt(jnp.asarray(features), jnp.asarray(ids)), options


def generate(
    params: dict, config: Config, inputs: dict, *, max_new_tokens: int | None = None, eos_ids=None,
    pad_id: int | None = None, sampling: Sampling = GREEDY, seed: int = 0, timestamps: bool = False,
) -> jax.Array:  # fmt: skip
    """New tokens b n of log-mel windows `inputs["input_features"]` (b mel 3000), the whole loop on device;
    a row emits the pad id after its EOS. max_new_tokens None: up to max_length. With `timestamps`, the
    tokens of transformers' `generate(..., return_timestamps=True)` (see `decode_passes`)."""
    args = (max_new_tokens, eos_ids, pad_id, sampling, seed)
    if timestamps:
        return decode_passes(params, config, inputs, *args)
    prompt, options = _loop_args(params, config, inputs, *args, False)
    return loop.generate_steps(Transcriber(config), params, prompt, None, **options)


def stream(
    params: dict, config: Config, inputs: dict, *, max_new_tokens: int | None = None, eos_ids=None,
    pad_id: int | None = None, sampling: Sampling = GREEDY, seed: int = 0, timestamps: bool = False,
):  # fmt: skip
    """Yield each step's tokens (b,) as they are chosen: the same tokens as `generate` (with `timestamps`,
    of its first pass)."""
    prompt, options = _loop_args(
        params, config, inputs, max_new_tokens, eos_ids, pad_id, sampling, seed, timestamps
    )
    yield from loop.stream_steps(Transcriber(config, timestamps), params, prompt, None, **options)


# ---------------------------------------------------------------- transformers' seek loop (timestamps)


def decode_passes(params: dict, config: Config, inputs: dict, *args) -> jax.Array:
    """transformers' `generate(return_timestamps=True)` on <= 30-s windows (spec 7.6): a pass that stops
    inside a segment (a timestamp pair, then more tokens) is decoded again from that pair's time, in feature
    space, until every row has covered its window. -> each row's kept tokens (no EOS), concatenated, padded
    with the pad id. The passes keep the batch shape: rows already done are filled with a live row."""
    prompt, options = _loop_args(params, config, inputs, *args, True)
    features = np.asarray(inputs["input_features"])
    b, _, frames = features.shape
    model, eos = Transcriber(config, True), np.asarray(options["eos_ids"])
    begin = config.generation.timestamp_begin
    stride = frames // config.encoder.max_source_positions  # mel frames per timestamp step
    seek, rows, live = np.zeros(b, np.int64), [[] for _ in range(b)], list(range(b))
    while live:
        window = np.stack([_from_frame(features[r], seek[r]) for r in live + live[:1] * (b - len(live))])
        prompt = prompt._replace(features=jnp.asarray(window))
        ids = np.asarray(loop.generate_steps(model, params, prompt, None, **options))
        for r, row in zip(live, ids, strict=False):
            end = np.flatnonzero(np.isin(row, eos))
            kept, advance = split_pass(row[: end[0]] if len(end) else row, begin, frames - seek[r], stride)
            rows[r] += kept
            seek[r] += advance
        live = [r for r in live if seek[r] < frames]
    width = max(map(len, rows))
    padded = [r + [options["pad_id"]] * (width - len(r)) for r in rows]
    return jnp.asarray(padded, jnp.int32).reshape(b, width)


def _from_frame(features: np.ndarray, frame: int) -> np.ndarray:
    """mel frames of one window from `frame` on, zero-padded (in feature space) to the window's length."""
    return np.pad(features[:, frame:], ((0, 0), (0, frame)))


def split_pass(tokens, timestamp_begin: int, frames_left: int, stride: int) -> tuple[list[int], int]:
    """(the tokens to keep, mel frames to advance) of one pass's tokens (EOS removed), as transformers'
    `_retrieve_segment`: a pass ending inside a segment keeps up to its last timestamp pair and goes on
    from that pair's time."""
    tokens = [int(t) for t in tokens]
    stamp = [t >= timestamp_begin for t in tokens]
    pairs = [i for i in range(1, len(tokens)) if stamp[i - 1] and stamp[i]]  # second of each pair
    if not pairs or stamp[-2:] == [False, True]:
        return tokens, frames_left
    return tokens[: pairs[-1] + 1], (tokens[pairs[-1] - 1] - timestamp_begin) * stride


def logits(params: dict, config: Config, input_features: Any, decoder_input_ids: Any) -> jax.Array:
    """Teacher-forced logits b t vocab (WhisperForConditionalGeneration's forward)."""
    encoded = whisper_encoder.forward(params["encoder"], config.encoder, jnp.asarray(input_features))
    return whisper_decoder.teacher_forced(
        params["decoder"], config.decoder, jnp.asarray(decoder_input_ids), encoded
    )
