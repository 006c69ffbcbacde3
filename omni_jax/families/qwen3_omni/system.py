"""Qwen3-Omni Thinker (Qwen3OmniMoeThinkerForConditionalGeneration): text, audio, images, video in; text out.

    config = ThinkerConfig.from_hf(hf_config)  # Qwen3OmniMoeConfig or its thinker_config (object or dict)
    tokens = generate(params, config, inputs, max_new_tokens=64, eos_ids=(151645,))  # processor outputs in

Parameters are `{"audio_encoder": AuT, "vision_encoder": ViT, "thinker": decoder}` (the converter's part
names; the vision tower is optional for text + audio). The AuT output stays
in its static (audios, tokens) layout with a validity mask; fusion gathers the m-th valid token into the m-th
`<|audio_pad|>` of the batch (rows in order), also with static shapes. Positions come from
`positions.rope_index` and go to the engine, which carries the last one (so the rope delta) into every
decode step. Prefill and decode return the hidden states the Talker reads (`talker_layers`) only when asked.
Images and videos go through the vision encoder separately (as transformers); their merged tokens replace the
`<|image_pad|>` / `<|video_pad|>` rows in order and their deepstack features become the decoder's
`layer_inputs`, added at those rows after its first layers (prefill only). With `use_audio_in_video` each
video's sound track is an audio of the call, its tokens interleaved with the video's by time.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax import validation
from omni_jax.families.qwen3_omni.positions import PositionConfig, rope_index
from omni_jax.inference import engine, loop
from omni_jax.inference.sampling import GREEDY, Sampling
from omni_jax.models import aut_encoder, decoder, vision_encoder
from omni_jax.nn.cache import KVCache, left_pad_start
from omni_jax.nn.fusion import place_audio

INPUTS = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")
VISION_INPUTS = (
    "pixel_values",
    "pixel_values_videos",
    "image_grid_thw",
    "video_grid_thw",
    "video_second_per_grid",
    "use_audio_in_video",
)


@dataclasses.dataclass(frozen=True)
class ThinkerConfig:
    audio: aut_encoder.AuTConfig
    text: decoder.Config
    tokens: PositionConfig
    accept_hidden_layer: int | None = None  # the hidden state the Talker reads (with the embeddings)
    vision: vision_encoder.VisionConfig | None = None

    def __post_init__(self):
        if self.audio.output_dim != self.text.hidden_size:
            raise ValueError(
                f"audio output_dim {self.audio.output_dim} != text hidden_size {self.text.hidden_size}"
            )
        v = self.vision
        if v is not None and v.out_hidden_size != self.text.hidden_size:
            raise ValueError(
                f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {self.text.hidden_size}"
            )
        if v is not None and len(v.deepstack_indexes) > self.text.num_layers:
            raise ValueError(
                f"{len(v.deepstack_indexes)} deepstack features for {self.text.num_layers} layers"
            )

    @classmethod
    def from_hf(cls, hf: Any) -> ThinkerConfig:
        """From a Qwen3OmniMoeConfig (its talker_config gives accept_hidden_layer) or a thinker config."""
        c = hf if isinstance(hf, dict) else hf.to_dict()
        if c.get("model_type") not in ("qwen3_omni_moe", "qwen3_omni_moe_thinker"):
            raise ValueError(
                f"not a Qwen3-Omni config: model_type {c.get('model_type')!r} (expected qwen3_omni_moe or "
                "qwen3_omni_moe_thinker)"
            )
        thinker = c.get("thinker_config", c)
        validation.config_keys(f"{c['model_type']} thinker config", thinker, ("audio_config", "text_config"))
        return cls(
            audio=aut_encoder.AuTConfig.from_hf(thinker),
            text=decoder.Config.from_hf({"model_type": "qwen3_omni_moe_text", **thinker["text_config"]}),
            tokens=PositionConfig.from_hf(thinker),
            accept_hidden_layer=(c.get("talker_config") or {}).get("accept_hidden_layer"),
            vision=vision_encoder.VisionConfig.from_hf(thinker) if thinker.get("vision_config") else None,
        )


def param_specs(config: ThinkerConfig) -> dict:
    specs = {
        "audio_encoder": aut_encoder.param_specs(config.audio),
        "thinker": decoder.param_specs(config.text),
    }
    if config.vision is not None:
        specs["vision_encoder"] = vision_encoder.param_specs(config.vision)
    return specs


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
    if unknown := sorted(set(inputs) - set(INPUTS) - set(VISION_INPUTS)):
        raise ValueError(f"unexpected inputs {unknown}; expected {INPUTS + VISION_INPUTS}")
    ids = validation.token_ids("input_ids", inputs.get("input_ids"), config.text.vocab_size)
    mask = inputs.get("attention_mask")
    mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    t = config.tokens
    features, feature_mask = inputs.get("input_features"), inputs.get("feature_attention_mask")
    if (features is None) != (feature_mask is None):
        raise ValueError(
            "input_features and feature_attention_mask come together (one was given without the other)"
        )
    lengths = np.zeros((0,), np.int64)
    if features is not None:
        features = validation.finite_array("input_features", np.asarray(features))
        feature_mask = np.asarray(feature_mask).astype(bool)
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
    if inputs.get("use_audio_in_video"):  # a video's audio tokens are interleaved with its frames
        runs, counts = [sum(runs)], [sum(counts)]
    if runs != counts:
        raise ValueError(
            f"audio placeholder count mismatch: input_ids have {sum(runs)} audio placeholder tokens "
            f"(runs {runs}) but the {len(counts)} audio(s) give {sum(counts)} tokens ({counts})"
        )
    return ids, mask, features, lengths


class Visual(NamedTuple):
    """Checked image or video inputs of a call."""

    pixels: np.ndarray  # patches C*T*p*p
    grid: np.ndarray  # items 3 (t h w)
    seconds: np.ndarray  # items: seconds per temporal grid (1 for images)


def _check_visual(
    config: ThinkerConfig, inputs: dict, ids: np.ndarray, mask: np.ndarray, kind: str
) -> Visual | None:
    """The images ("image") or videos ("video") of the inputs, checked against their placeholders."""
    pixel_key, grid_key = ("pixel_values", "image_grid_thw") if kind == "image" else (
        "pixel_values_videos", "video_grid_thw")  # fmt: skip
    pixels, grid = inputs.get(pixel_key), inputs.get(grid_key)
    token = config.tokens.image_token_id if kind == "image" else config.tokens.video_token_id
    placeholders = int(((ids == token) & mask).sum())
    if pixels is None and grid is None:
        if placeholders:
            raise ValueError(f"input_ids hold {placeholders} {kind} placeholder tokens but no {pixel_key}")
        return None
    if (pixels is None) != (grid is None):
        raise ValueError(f"{pixel_key} and {grid_key} come together (one was given without the other)")
    if config.vision is None:
        raise ValueError(f"this checkpoint has no vision encoder: {kind} inputs cannot be used")
    pixels = np.asarray(pixels)
    grid = vision_encoder.check_grid(config.vision, grid, pixels.shape[0] if pixels.ndim == 2 else None)
    tokens = vision_encoder.token_counts(config.vision, grid)
    if placeholders != tokens.sum():
        raise ValueError(
            f"{kind} placeholder count mismatch: input_ids have {placeholders} {kind} placeholder tokens but "
            f"the {len(grid)} {kind}(s) give {int(tokens.sum())} tokens ({tokens.tolist()})"
        )
    seconds = np.ones(len(grid), np.float32)
    if kind == "video" and inputs.get("video_second_per_grid") is not None:
        seconds = np.asarray(inputs["video_second_per_grid"], np.float32).reshape(-1)
        if seconds.shape != (len(grid),) or (seconds <= 0).any():
            raise ValueError(f"video_second_per_grid {seconds.tolist()} must be one positive value per video")
    return Visual(pixels, grid, seconds)


def _check_audio_in_video(config: ThinkerConfig, ids, mask, videos: Visual | None, n_audio: int) -> None:
    """With use_audio_in_video every video block must hold its audio (<|vision_start|><|audio_start|>)."""
    t = config.tokens
    nested = sum(
        int(((row[:-1] == t.vision_start_token_id) & (row[1:] == t.audio_start_token_id) & keep[1:]).sum())
        for row, keep in zip(ids, mask, strict=True)
    )
    n_videos = 0 if videos is None else len(videos.grid)
    if nested != n_videos or n_audio < n_videos:
        raise ValueError(
            f"use_audio_in_video=True needs an audio track for every video: {n_videos} video(s), {nested} "
            f"with audio placeholders, {n_audio} audio(s); a silent video needs use_audio_in_video=False"
        )


class Prompt(NamedTuple):
    embeds: jax.Array  # b t d, audio, images and videos fused
    attention_mask: np.ndarray  # b t bool
    positions: np.ndarray  # 3 b t float32
    input_ids: np.ndarray  # b t, before any bucket padding
    layer_inputs: jax.Array | None = None  # n b t d: deepstack features at the visual rows


@functools.partial(jax.jit, static_argnums=(1, 5))
def _fuse(params: dict, text: decoder.Config, ids, audio, valid, audio_token_id: int) -> jax.Array:
    """Token embeddings with the m-th valid audio token (audio order) at the m-th placeholder (row-major).
    ids b t; audio n k d; valid n k. -> b t d."""
    return place_audio(decoder.embed(params, text, ids), ids == audio_token_id, audio, valid)


@jax.jit
def _fuse_visual(embeds, layer_inputs, is_visual, merged, deepstack, tokens):
    """Merged vision tokens (the first `tokens` of m) at the rows of is_visual (row-major), deepstack
    features there in layer_inputs. embeds b t d; layer_inputs n b t d; merged m d; deepstack n m d."""
    valid = (jnp.arange(merged.shape[0]) < tokens)[None]
    embeds = place_audio(embeds, is_visual, merged[None], valid)
    if deepstack is not None:
        layer_inputs = jax.vmap(lambda li, ds: place_audio(li, is_visual, ds[None], valid))(
            layer_inputs, deepstack
        )
    return embeds, layer_inputs


def _visual_embeds(params: dict, config: ThinkerConfig, ids, embeds, visuals: dict) -> tuple:
    """Images, then videos, encoded (one call each) and fused. -> (embeds b t d, layer_inputs n b t d or
    None)."""
    n = len(config.vision.deepstack_indexes) if config.vision else 0
    layer_inputs = jnp.zeros((n, *embeds.shape), embeds.dtype) if n and visuals else None
    for kind, visual in visuals.items():
        token = config.tokens.image_token_id if kind == "image" else config.tokens.video_token_id
        out = vision_encoder.encode(params["vision_encoder"], config.vision, visual.pixels, visual.grid)
        embeds, layer_inputs = _fuse_visual(
            embeds, layer_inputs, jnp.asarray(ids == token), out.embeds, out.deepstack, out.tokens
        )
    return embeds, layer_inputs


def prepare_prompt(params: dict, config: ThinkerConfig, inputs: dict, *, bucket_limit: int = 0) -> Prompt:
    """Processor outputs -> fused embeddings, deepstack layer inputs and MRoPE positions (checked first). With
    `bucket_limit`, the prompt is left-padded here to the engine's length bucket (`engine.pad_to_bucket`), so
    that the fusion and the engine see one shape per bucket; `input_ids` stay unpadded."""
    ids, mask, features, lengths = check_inputs(config, inputs)
    visuals = {k: v for k in ("image", "video") if (v := _check_visual(config, inputs, ids, mask, k))}
    in_video = bool(inputs.get("use_audio_in_video"))
    if in_video:
        _check_audio_in_video(config, ids, mask, visuals.get("video"), len(lengths))
    images, videos = visuals.get("image"), visuals.get("video")
    positions, _ = rope_index(
        config.tokens,
        ids,
        mask,
        audio_lengths=lengths,
        image_grid_thw=None if images is None else images.grid,
        video_grid_thw=None if videos is None else videos.grid,
        second_per_grids=None if videos is None else videos.seconds,
        use_audio_in_video=in_video,
    )  # fmt: skip  (decoding goes on from the last position)
    prompt_ids = ids
    if bucket_limit:
        ids, mask, positions = engine.pad_to_bucket(bucket_limit, ids, mask, positions)
    if features is None:
        embeds = decoder.embed(params["thinker"], config.text, jnp.asarray(ids))
    else:
        audio, valid = aut_encoder.encode(params["audio_encoder"], config.audio, features, lengths)
        embeds = _fuse(params["thinker"], config.text, ids, audio, valid, config.tokens.audio_token_id)
    embeds, layer_inputs = _visual_embeds(params, config, ids, embeds, visuals)
    return Prompt(embeds, mask, positions, prompt_ids, layer_inputs)


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
        positions=p.positions, layer_inputs=p.layer_inputs, hidden_layers=hidden_layers, reserve=reserve,
    )  # fmt: skip


def decode_step(
    params: dict, config: ThinkerConfig, tokens: Any, cache: KVCache, *, hidden_layers: tuple[int, ...] = ()
) -> engine.Step:
    """One token per row (b) at the position the cache carries (last prompt position + 1 + steps so far)."""
    return engine.decode_step(params["thinker"], config.text, tokens, cache, hidden_layers=hidden_layers)


def _loop_args(params: dict, config: ThinkerConfig, inputs: dict) -> tuple[jax.Array, dict]:
    p = prepare_prompt(params, config, inputs, bucket_limit=1 << 62)  # the loop's cache fits any bucket
    return p.embeds, dict(
        attention_mask=p.attention_mask, positions=p.positions, prompt_ids=p.input_ids,
        layer_inputs=p.layer_inputs,
    )  # fmt: skip


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


def stream_blocks(
    params: dict, config: ThinkerConfig, inputs: dict, *, sizes: tuple[int, ...], max_new_tokens: int,
    sampling: Sampling = GREEDY, eos_ids: int | tuple[int, ...] = (), pad_id: int | None = None,
    seed: int = 0,
) -> Iterator[np.ndarray]:  # fmt: skip
    """`stream` in blocks b n: step 0, then up to sizes[k] steps per jitted call (the last size repeats)."""
    embeds, kw = _loop_args(params, config, inputs)
    return loop.stream_blocks(
        params["thinker"], config.text, embeds, sizes=sizes, max_new_tokens=max_new_tokens, sampling=sampling,
        eos_ids=eos_ids, pad_id=pad_id, seed=seed, **kw,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=(1, 5, 7))
def _forward(params, text, embeds, positions, start, hidden_layers, layer_inputs=None, logits="all"):
    out, _ = decoder.forward(
        params, text, embeds, positions=positions, start=start, layer_inputs=layer_inputs,
        hidden_layers=hidden_layers, logits=logits,
    )  # fmt: skip
    return out


def forward(
    params: dict, config: ThinkerConfig, inputs: dict, *, hidden_layers: tuple[int, ...] = (),
    logits: str = "all",
):  # fmt: skip
    """Whole-prompt forward without a cache (left padding): decoder.Output with logits b t vocab ("none":
    hidden states only)."""
    p = prepare_prompt(params, config, inputs)
    start = jnp.asarray(left_pad_start(p.attention_mask, np.shape(p.attention_mask)))
    return _forward(
        params["thinker"], config.text, p.embeds, jnp.asarray(p.positions), start, tuple(hidden_layers),
        p.layer_inputs, logits,
    )  # fmt: skip
