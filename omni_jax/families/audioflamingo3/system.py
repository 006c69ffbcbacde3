"""AudioFlamingo3: Whisper-style encoder -> 2x average pooling -> projector -> audio embeddings written into
the `<sound>` rows of the text embeddings -> Qwen2 decoder (through omni_jax.inference).

    config = Config.from_hf(hf_config)          # AudioFlamingo3Config (object or config.json dict)
    embeds = embed_inputs(params, config, input_ids, input_features, input_features_mask)   # b s d
    new = generate(params, config, inputs, max_new_tokens=24, eos_ids=..., pad_id=...)   # b n

The k-th kept audio frame (windows in order, the first floor(c/2) pooled frames of each) fills the k-th
`<sound>` position (rows in order, left to right), as transformers' masked_scatter does, but with static
shapes (a stable argsort and a gather). Before anything runs, every row's `<sound>` count must be covered by
whole windows taken in order, so one sample's audio can never land in another's rows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax import validation
from omni_jax.inference import engine, loop
from omni_jax.inference.sampling import GREEDY, Sampling
from omni_jax.models import decoder, projector, whisper_encoder
from omni_jax.models.audio_common import hf_get
from omni_jax.nn.cache import left_pad_start
from omni_jax.nn.fusion import place_audio


@dataclasses.dataclass(frozen=True)
class Config:
    encoder: whisper_encoder.WhisperEncoderConfig
    projector: projector.ProjectorConfig
    decoder: decoder.Config
    audio_token_id: int = 151669

    def __post_init__(self):
        if (
            self.projector.d_audio != self.encoder.d_model
            or self.projector.d_text != self.decoder.hidden_size
        ):
            raise ValueError(
                f"projector {self.projector.d_audio}->{self.projector.d_text} does not join encoder width "
                f"{self.encoder.d_model} to decoder width {self.decoder.hidden_size}"
            )
        if not 0 <= self.audio_token_id < self.decoder.vocab_size:
            raise ValueError(
                f"audio_token_id {self.audio_token_id} outside the vocabulary ({self.decoder.vocab_size})"
            )

    @classmethod
    def from_hf(cls, cfg: Any) -> Config:
        """From an AudioFlamingo3Config object or its config.json dict."""
        if hf_get(cfg, "model_type") != "audioflamingo3":
            raise ValueError(f"not an AudioFlamingo3 config: model_type {hf_get(cfg, 'model_type')!r}")
        if isinstance(cfg, dict):
            validation.config_keys("audioflamingo3 config", cfg, ("audio_config", "text_config"))
        text = cfg["text_config"] if isinstance(cfg, dict) else cfg.text_config
        return cls(
            encoder=whisper_encoder.WhisperEncoderConfig.from_hf(cfg),
            projector=projector.ProjectorConfig.from_hf(cfg),
            decoder=decoder.Config.from_hf(text),
            audio_token_id=hf_get(cfg, "audio_token_id", default=151669),
        )


def param_specs(config: Config) -> dict:
    parts = (("encoder", whisper_encoder), ("projector", projector), ("decoder", decoder))
    return {name: module.param_specs(getattr(config, name)) for name, module in parts}


# ---------------------------------------------------------------- fusion


def check_audio_tokens(input_ids: np.ndarray, window_tokens: np.ndarray, audio_token_id: int) -> None:
    """Each row's audio-token count must be met by a run of whole windows taken in order (transformers only
    checks the total, so a mismatch there silently moves audio between samples)."""
    counts = (np.asarray(input_ids) == audio_token_id).sum(1)
    window_tokens = np.asarray(window_tokens, np.int64)
    if window_tokens.sum() and not counts.any():
        raise ValueError(
            f"audio was given ({window_tokens.sum()} audio tokens) but the text has no audio token "
            f"({audio_token_id}, <sound>): put one <sound> per audio in the prompt"
        )
    ends = np.concatenate([[0], np.cumsum(window_tokens)])  # tokens before window i
    if ends[-1] != counts.sum():
        raise ValueError(
            f"the audio holds {ends[-1]} audio tokens but the text has {counts.sum()} "
            f"(per row: {counts.tolist()}); expand each <sound> with the processor"
        )
    if bad := [r for r, n in enumerate(np.cumsum(counts)) if n not in ends]:
        raise ValueError(
            f"row(s) {bad}: the audio tokens of a row must come from whole windows of its own audio (tokens "
            f"per row {counts.tolist()}, per window {window_tokens.tolist()}): prompts and audio do not match"
        )


@functools.partial(jax.jit, static_argnums=1)
def _fused(params, config: Config, input_ids, features, key_lengths, valid) -> jax.Array:
    hidden = whisper_encoder.forward(params["encoder"], config.encoder, features, key_lengths)  # w t da
    audio = projector.forward(params["projector"], config.projector, hidden)  # w t d
    text = decoder.embed(params["decoder"], config.decoder, input_ids)  # b s d
    return place_audio(text, input_ids == config.audio_token_id, audio, valid)


def embed_inputs(
    params: dict, config: Config, input_ids, input_features=None, input_features_mask=None
) -> jax.Array:
    """Token ids b s (+ log-mel windows w mel frames and their frame mask w frames) -> embeddings b s d with
    the audio in the `<sound>` rows. All checks run before any compute."""
    ids = validation.token_ids("input_ids", input_ids, config.decoder.vocab_size)
    if input_features is None:
        check_audio_tokens(ids, np.zeros((0,), np.int64), config.audio_token_id)
        return decoder.embed(params["decoder"], config.decoder, jnp.asarray(ids))
    if input_features_mask is None:
        raise ValueError("input_features_mask is required with input_features (1 = real mel frame)")
    validation.finite_array("input_features", np.asarray(input_features))
    lengths = whisper_encoder.check_inputs(
        config.encoder, input_features, input_features_mask, params["encoder"]["conv1"]["kernel"].dtype
    )
    tokens = whisper_encoder.output_lengths(config.encoder, lengths)
    check_audio_tokens(ids, tokens, config.audio_token_id)
    valid = np.arange(config.encoder.max_source_positions // 2) < tokens[:, None]
    key_lengths = jnp.asarray(whisper_encoder.conv_lengths(lengths), jnp.int32)
    return _fused(
        params, config, jnp.asarray(ids), jnp.asarray(input_features), key_lengths, jnp.asarray(valid)
    )


def _decoder_inputs(
    params: dict, config: Config, inputs: dict, *, bucket_limit: int = 0
) -> tuple[jax.Array, Any]:
    """Embeddings and attention mask; with `bucket_limit`, left-padded first to the engine's length bucket
    (one fusion compile per bucket)."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    if bucket_limit:  # ids checked before they are padded
        ids = validation.token_ids("input_ids", ids, config.decoder.vocab_size)
        mask = np.ones(np.shape(ids), bool) if mask is None else mask
        ids, mask = engine.pad_to_bucket(bucket_limit, ids, mask)
    embeds = embed_inputs(
        params, config, ids, inputs.get("input_features"), inputs.get("input_features_mask")
    )
    return embeds, mask


def logits(params: dict, config: Config, inputs: dict) -> jax.Array:
    """Prefill logits b s vocab of a processor output (input_ids, attention_mask, input_features, ...)."""
    embeds, mask = _decoder_inputs(params, config, inputs)
    start = None if mask is None else jnp.asarray(left_pad_start(mask, np.shape(mask)))
    return _logits(params, config, embeds, start)


@functools.partial(jax.jit, static_argnums=1)
def _logits(params, config: Config, embeds, start) -> jax.Array:
    return decoder.forward(params["decoder"], config.decoder, embeds, start=start)[0].logits


def generate(
    params: dict,
    config: Config,
    inputs: dict,
    *,
    max_new_tokens: int,
    eos_ids: tuple[int, ...] = (),
    pad_id: int | None = None,
    sampling: Sampling = GREEDY,
    seed: int = 0,
) -> jax.Array:
    """New tokens b max_new_tokens (pad after a row's EOS), the whole loop on device."""
    embeds, mask = _decoder_inputs(params, config, inputs, bucket_limit=1 << 62)  # the loop's cache fits
    return loop.generate(
        params["decoder"], config.decoder, embeds, max_new_tokens=max_new_tokens, attention_mask=mask,
        sampling=sampling, eos_ids=eos_ids, pad_id=pad_id, seed=seed, prompt_ids=inputs["input_ids"],
    )  # fmt: skip


def stream(
    params: dict,
    config: Config,
    inputs: dict,
    *,
    max_new_tokens: int,
    eos_ids=(),
    pad_id=None,
    sampling: Sampling = GREEDY,
    seed: int = 0,
):
    """Yield each step's tokens (b,) as they are chosen; same tokens as `generate`."""
    embeds, mask = _decoder_inputs(params, config, inputs, bucket_limit=1 << 62)
    yield from loop.stream(
        params["decoder"], config.decoder, embeds, max_new_tokens=max_new_tokens, attention_mask=mask,
        sampling=sampling, eos_ids=eos_ids, pad_id=pad_id, seed=seed, prompt_ids=inputs["input_ids"],
    )  # fmt: skip
