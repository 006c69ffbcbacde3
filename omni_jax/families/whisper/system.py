"""Whisper speech recognition: log-mel -> encoder -> text decoder (cross-attention K/V computed once, at
prefill) -> tokens, as transformers' `WhisperForConditionalGeneration.generate` on <= 30-s windows.

    config = Config.from_hf(hf_config, generation_config)      # config.json / generation_config.json dicts
    new = generate(params, config, {"input_features": f}, max_new_tokens=100)     # b n, pad after EOS

The prompt is `[decoder_start] + forced ids + [<|notimestamps|>]` (English-only checkpoints: no language or
task tokens); `begin_suppress_tokens` are masked for the first generated token, `suppress_tokens` at every
step; greedy or temperature sampling; at most `max_length` (448) positions in all. Spec:
shared/spec/whisper_decoder.md 7.
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
        )

    @property
    def prompt(self) -> tuple[int, ...]:
        """The decoder prompt of a plain-text pass (transformers' `_retrieve_init_tokens`)."""
        ids = (self.decoder_start_token_id, *self.forced_ids)
        if self.no_timestamps_token_id is not None and ids[-1] != self.no_timestamps_token_id:
            ids += (self.no_timestamps_token_id,)
        return ids


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


def param_specs(config: Config) -> dict:
    parts = (("encoder", whisper_encoder), ("decoder", whisper_decoder))
    return {name: module.param_specs(getattr(config, name)) for name, module in parts}


# ---------------------------------------------------------------- the step model


class Prompt(NamedTuple):
    features: jax.Array  # b mel frames
    ids: jax.Array  # b n (the same prompt on every row)


@dataclasses.dataclass(frozen=True)
class Transcriber:
    """Whisper as an omni_jax.inference.engine StepModel: prefill encodes the audio, fills the cross K/V and
    runs the prompt; each step decodes one token per row."""

    config: Config

    def init_cache(self, params: dict, batch: int, length: int) -> whisper_decoder.Cache:
        frames = self.config.encoder.max_source_positions
        dtype = params["decoder"]["embed"].dtype
        return whisper_decoder.init_cache(self.config.decoder, batch, length, frames, dtype)

    def prefill(self, params: dict, prompt: Prompt, cache: whisper_decoder.Cache) -> Step:
        c = self.config
        with jax.named_scope("encoder"):
            encoded = whisper_encoder.forward(params["encoder"], c.encoder, prompt.features)  # b frames d
        cache = whisper_decoder.with_encoder(params["decoder"], c.decoder, encoded, cache)
        logits, cache = whisper_decoder.forward(params["decoder"], c.decoder, prompt.ids, cache)
        begin = c.generation.begin_suppress_tokens
        logits = logits.astype(jnp.float32)
        if begin:  # only the first generated token
            logits = logits.at[:, jnp.asarray(begin)].set(-jnp.inf)
        return Step(logits, cache, {})

    def step(self, params: dict, inputs: jax.Array, cache: whisper_decoder.Cache) -> Step:
        logits, cache = whisper_decoder.forward(params["decoder"], self.config.decoder, inputs, cache)
        return Step(logits.astype(jnp.float32), cache, {})

    def next_input(self, params: dict, tokens: jax.Array) -> jax.Array:
        return tokens[:, None]


def _loop_args(params, config: Config, inputs: dict, max_new_tokens, eos_ids, pad_id, sampling, seed):
    """(prompt, keyword arguments of the engine's loops), checked before anything runs."""
    features = inputs["input_features"]
    whisper_encoder.check_inputs(config.encoder, features, None, params["encoder"]["conv1"]["kernel"].dtype)
    g = config.generation
    n = len(g.prompt)
    room = g.max_length - n
    max_new = room if max_new_tokens is None else max_new_tokens
    if not 1 <= max_new <= room:
        raise ValueError(
            f"max_new_tokens {max_new} outside 1..{room}: the {n} prompt tokens and the new ones must fit "
            f"max_length {g.max_length}"
        )
    ids = np.tile(np.asarray(g.prompt, np.int32), (np.shape(features)[0], 1))
    options = dict(
        max_new_tokens=max_new,
        length=n + max_new,
        sampling=dataclasses.replace(sampling, suppress_tokens=g.suppress_tokens + sampling.suppress_tokens),
        eos_ids=tuple(eos_ids or (g.eos_token_id,)),
        pad_id=g.pad_token_id if pad_id is None else pad_id,
        seed=seed,
    )
    return Prompt(jnp.asarray(features), jnp.asarray(ids)), options


def generate(
    params: dict, config: Config, inputs: dict, *, max_new_tokens: int | None = None, eos_ids=None,
    pad_id: int | None = None, sampling: Sampling = GREEDY, seed: int = 0,
) -> jax.Array:  # fmt: skip
    """New tokens b n of log-mel windows `inputs["input_features"]` (b mel 3000), the whole loop on device;
    a row emits the pad id after its EOS. max_new_tokens None: up to max_length."""
    prompt, options = _loop_args(params, config, inputs, max_new_tokens, eos_ids, pad_id, sampling, seed)
    return loop.generate_steps(Transcriber(config), params, prompt, None, **options)


def stream(
    params: dict, config: Config, inputs: dict, *, max_new_tokens: int | None = None, eos_ids=None,
    pad_id: int | None = None, sampling: Sampling = GREEDY, seed: int = 0,
):  # fmt: skip
    """Yield each step's tokens (b,) as they are chosen; the same tokens as `generate`."""
    prompt, options = _loop_args(params, config, inputs, max_new_tokens, eos_ids, pad_id, sampling, seed)
    yield from loop.stream_steps(Transcriber(config), params, prompt, None, **options)


def logits(params: dict, config: Config, input_features: Any, decoder_input_ids: Any) -> jax.Array:
    """Teacher-forced logits b t vocab (WhisperForConditionalGeneration's forward)."""
    encoded = whisper_encoder.forward(params["encoder"], config.encoder, jnp.asarray(input_features))
    return whisper_decoder.teacher_forced(
        params["decoder"], config.decoder, jnp.asarray(decoder_input_ids), encoded
    )
