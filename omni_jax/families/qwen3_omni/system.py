"""Qwen3-Omni Thinker (Qwen3OmniMoeThinkerForConditionalGeneration): text + audio in, text out.

    config = ThinkerConfig.from_hf(hf_config)  # Qwen3OmniMoeConfig or its thinker_config (object or dict)
    tokens = generate(params, config, inputs, max_new_tokens=64, eos_ids=(151645,))  # processor outputs in

Parameters are `{"audio_encoder": AuT, "thinker": decoder}` (the converter's part names). The AuT output stays
in its static (audios, tokens) layout with a validity mask; fusion gathers the m-th valid token into the m-th
`<|audio_pad|>` of the batch (rows in order), also with static shapes. Positions come from
`positions.rope_index` and go to the engine, which carries the last one (so the rope delta) into every
decode step. Prefill and decode return the hidden states the Talker reads (`talker_layers`) only when asked.
Images and videos are not supported yet.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.families.qwen3_omni.positions import PositionConfig, rope_index
from omni_jax.inference import engine, loop
from omni_jax.inference.sampling import GREEDY, Sampling
from omni_jax.models import aut_encoder, decoder
from omni_jax.nn.cache import KVCache, left_pad_start
from omni_jax.nn.fusion import place_audio

INPUTS = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")
VISION_INPUTS = (
    "pixel_values",
    "pixel_values_videos",
    "image_grid_thw",
    "video_grid_thw",
    "video_second_per_grid",
)


@dataclasses.dataclass(frozen=True)
class ThinkerConfig:
    audio: aut_encoder.AuTConfig
    text: decoder.Config
    tokens: PositionConfig
    accept_hidden_layer: int | None = None  # the hidden state the Talker reads (with the embeddings)

    def __post_init__(self):
        if self.audio.output_dim != self.text.hidden_size:
            raise ValueError(
                f"audio output_dim {self.audio.output_dim} != text hidden_size {self.text.hidden_size}"
            )

    @classmethod
    def from_hf(cls, hf: Any) -> ThinkerConfig:
        """From a Qwen3OmniMoeConfig (its talker_config gives accept_hidden_layer) or a thinker config."""
        c = hf if isinstance(hf, dict) else hf.to_dict()
        thinker = c.get("thinker_config", c)
        return cls(
            audio=aut_encoder.AuTConfig.from_hf(thinker),
            text=decoder.Config.from_hf({"model_type": "qwen3_omni_moe_text", **thinker["text_config"]}),
            tokens=PositionConfig.from_hf(thinker),
            accept_hidden_layer=(c.get("talker_config") or {}).get("accept_hidden_layer"),
        )


def param_specs(config: ThinkerConfig) -> dict:
    return {
        "audio_encoder": aut_encoder.param_specs(config.audio),
        "thinker": decoder.param_specs(config.text),
    }


def talker_layers(config: ThinkerConfig) -> tuple[int, int]:
    """`hidden_layers` for the Talker: the fused embeddings (0) and layer `accept_hidden_layer`'s output."""
    layer = config.accept_hidden_layer
    if layer is None or not 0 < layer <= config.text.num_layers:
        raise ValueError(
            f"accept_hidden_layer {layer} is not a layer of the {config.text.num_layers}-layer thinker"
        )
    return 0, layer


# ---------------------------------------------------------------- inputs


def _runs(row: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    return (np.flatnonzero(edges < 0) - np.flatnonzero(edges > 0)).tolist()


def check_inputs(
    config: ThinkerConfig, inputs: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Validate processor outputs before any work. -> (input_ids b t, attention_mask b t, features n mel f or
    None, audio lengths n in mel frames)."""
    if not isinstance(inputs, dict):
        raise ValueError(f"inputs must be a dict of processor outputs, got {type(inputs).__name__}")
    if vision := [k for k in VISION_INPUTS if inputs.get(k) is not None]:
        raise ValueError(
            f"Qwen3-Omni image and video inputs are not supported yet (text and audio only): {vision}"
        )
    if unknown := sorted(set(inputs) - set(INPUTS) - set(VISION_INPUTS)):
        raise ValueError(f"unexpected inputs {unknown}; expected {INPUTS}")
    ids = np.asarray(inputs.get("input_ids"))
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers (batch, length), got {ids.dtype} {ids.shape}")
    mask = inputs.get("attention_mask")
    mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    t = config.tokens
    if found := {t.image_token_id, t.video_token_id} & set(ids[mask].tolist()):
        raise ValueError(f"input_ids hold image/video placeholders {sorted(found)}: not supported yet")
    features, feature_mask = inputs.get("input_features"), inputs.get("feature_attention_mask")
    if (features is None) != (feature_mask is None):
        raise ValueError(
            "input_features and feature_attention_mask come together (one was given without the other)"
        )
    lengths = np.zeros((0,), np.int64)
    if features is not None:
        features, feature_mask = np.asarray(features), np.asarray(feature_mask).astype(bool)
        if features.ndim != 3 or features.shape[1] != config.audio.num_mel_bins:
            raise ValueError(
                f"input_features must be (audios, {config.audio.num_mel_bins}, frames), got {features.shape}"
            )
        if feature_mask.shape != (features.shape[0], features.shape[2]):
            raise ValueError(
                f"feature_attention_mask {feature_mask.shape} does not match input_features {features.shape}"
            )
        lengths = feature_mask.sum(1)
        if (feature_mask != (np.arange(features.shape[2]) < lengths[:, None])).any() or (lengths < 1).any():
            raise ValueError("feature_attention_mask rows must be ones then zeros, with at least one frame")
    runs = [n for row, keep in zip(ids, mask, strict=True) for n in _runs((row == t.audio_token_id) & keep)]
    counts = aut_encoder.audio_token_count(lengths).tolist()
    if runs != counts:
        raise ValueError(
            f"audio placeholder count mismatch: input_ids have {sum(runs)} audio placeholder tokens "
            f"(runs {runs}) but the {len(counts)} audio(s) give {sum(counts)} tokens ({counts})"
        )
    return ids, mask, features, lengths


class Prompt(NamedTuple):
    embeds: jax.Array  # b t d, audio fused
    attention_mask: np.ndarray  # b t bool
    positions: np.ndarray  # 3 b t float32
    input_ids: np.ndarray  # b t, before any bucket padding


@functools.partial(jax.jit, static_argnums=(1, 5))
def _fuse(params: dict, text: decoder.Config, ids, audio, valid, audio_token_id: int) -> jax.Array:
    """Token embeddings with the m-th valid audio token (audio order) at the m-th placeholder (row-major).
    ids b t; audio n k d; valid n k. -> b t d."""
    return place_audio(decoder.embed(params, text, ids), ids == audio_token_id, audio, valid)


def prepare_prompt(params: dict, config: ThinkerConfig, inputs: dict, *, bucket_limit: int = 0) -> Prompt:
    """Processor outputs -> fused embeddings and MRoPE positions (checked first). With `bucket_limit`, the
    prompt is left-padded here to the engine's length bucket (`engine.pad_to_bucket`), so that the fusion and
    the engine see one shape per bucket; `input_ids` stay unpadded."""
    ids, mask, features, lengths = check_inputs(config, inputs)
    positions, _ = rope_index(config.tokens, ids, mask, audio_lengths=lengths)  # decode goes on from the last
    prompt_ids = ids
    if bucket_limit:
        ids, mask, positions = engine.pad_to_bucket(bucket_limit, ids, mask, positions)
    if features is None:
        embeds = decoder.embed(params["thinker"], config.text, jnp.asarray(ids))
    else:
        audio, valid = aut_encoder.encode(params["audio_encoder"], config.audio, features, lengths)
        embeds = _fuse(params["thinker"], config.text, ids, audio, valid, config.tokens.audio_token_id)
    return Prompt(embeds, mask, positions, prompt_ids)


# ---------------------------------------------------------------- running


def prefill(
    params: dict,
    config: ThinkerConfig,
    inputs: dict,
    cache: KVCache,
    *,
    hidden_layers: tuple[int, ...] = (),
    reserve: int = 0,
) -> engine.Step:
    """Encode the audio, fuse and fill `cache` (donated); logits of the last position, and the hidden states
    asked for (e.g. `talker_layers(config)`) over the prompt."""
    p = prepare_prompt(params, config, inputs)
    return engine.prefill(
        params["thinker"], config.text, p.embeds, cache, attention_mask=p.attention_mask,
        positions=p.positions, hidden_layers=hidden_layers, reserve=reserve,
    )  # fmt: skip


def decode_step(
    params: dict, config: ThinkerConfig, tokens: Any, cache: KVCache, *, hidden_layers: tuple[int, ...] = ()
) -> engine.Step:
    """One token per row (b) at the position the cache carries (last prompt position + 1 + steps so far)."""
    return engine.decode_step(params["thinker"], config.text, tokens, cache, hidden_layers=hidden_layers)


def _loop_args(params: dict, config: ThinkerConfig, inputs: dict) -> tuple[jax.Array, dict]:
    p = prepare_prompt(params, config, inputs, bucket_limit=1 << 62)  # the loop's cache fits any bucket
    return p.embeds, dict(attention_mask=p.attention_mask, positions=p.positions, prompt_ids=p.input_ids)


def generate(
    params: dict, config: ThinkerConfig, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY,
    eos_ids: int | tuple[int, ...] = (), pad_id: int | None = None, seed: int = 0,
) -> jax.Array:  # fmt: skip
    """New tokens b max_new_tokens (a row emits pad_id after its EOS), prefill and decode on device."""
    embeds, kw = _loop_args(params, config, inputs)
    return loop.generate(
        params["thinker"], config.text, embeds, max_new_tokens=max_new_tokens, sampling=sampling,
        eos_ids=eos_ids, pad_id=pad_id, seed=seed, **kw,
    )  # fmt: skip


def stream(
    params: dict, config: ThinkerConfig, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY,
    eos_ids: int | tuple[int, ...] = (), pad_id: int | None = None, seed: int = 0,
) -> Iterator[np.ndarray]:  # fmt: skip
    """Each step's tokens (b,) as they are chosen; the same tokens as `generate`."""
    embeds, kw = _loop_args(params, config, inputs)
    return loop.stream(
        params["thinker"], config.text, embeds, max_new_tokens=max_new_tokens, sampling=sampling,
        eos_ids=eos_ids, pad_id=pad_id, seed=seed, **kw,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=(1, 5))
def _forward(params, text, embeds, positions, start, hidden_layers):
    out, _ = decoder.forward(
        params, text, embeds, positions=positions, start=start, hidden_layers=hidden_layers, logits="all"
    )
    return out


def forward(params: dict, config: ThinkerConfig, inputs: dict, *, hidden_layers: tuple[int, ...] = ()):
    """Whole-prompt forward without a cache (left padding): decoder.Output with logits b t vocab."""
    p = prepare_prompt(params, config, inputs)
    start = jnp.asarray(left_pad_start(p.attention_mask, np.shape(p.attention_mask)))
    return _forward(
        params["thinker"], config.text, p.embeds, jnp.asarray(p.positions), start, tuple(hidden_layers)
    )
