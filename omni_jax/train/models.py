"""What training needs of each family: its checkpoint maps, config, the per-micro-batch loss sums (a pure,
jittable function of params and a batch of static-shape arrays) and the parameters transformers freezes.

    model = load("checkpoints/af3")                    # TrainModel: family, config, params, processor
    nll, n, aux = model.family.sums(params, model.config, batch)

Batches are the arrays `omni_jax.train.data` builds: input_ids, labels, attention_mask (b t, left padded),
and per family the audio in fixed slots (AF3: windows; Thinker: clips), with the validity of each slot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert.checkpoint import MANIFEST
from omni_jax.convert.parts import CheckpointMap, find_map
from omni_jax.convert.plan import open_jax, plan_hf, read_hf_config
from omni_jax.families.audioflamingo3 import checkpoint as af3_checkpoint
from omni_jax.families.audioflamingo3 import system as af3
from omni_jax.families.audioflamingo3.processor import AudioFlamingo3Processor
from omni_jax.families.qwen3_omni import checkpoint as omni_checkpoint
from omni_jax.families.qwen3_omni import system as thinker
from omni_jax.families.qwen3_omni.positions import rope_index
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor
from omni_jax.models import aut_encoder, decoder, projector, whisper_encoder
from omni_jax.nn.fusion import place_audio
from omni_jax.nn.params import set_path
from omni_jax.train.loss import load_balancing_loss, token_nll


def _start(mask: jax.Array) -> jax.Array:
    """First valid slot of each left-padded row. b t -> b."""
    return (mask.shape[1] - mask.sum(1)).astype(jnp.int32)


def _window_nll(params: dict, config: decoder.Config, hidden: jax.Array, labels: jax.Array):
    """(summed NLL, counted targets) of the labels' columns: the lm_head runs on the last w positions only,
    w = labels.shape[1] (`data.keep_label_window`; w = t is the whole row). hidden b t d, labels b w."""
    window = hidden[:, hidden.shape[1] - labels.shape[1] :]  # b w d
    return token_nll(decoder.unembed(params, config, window), labels)


def af3_sums(params: dict, config: af3.Config, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """AudioFlamingo3: (summed NLL, counted targets, 0): encoder -> projector -> `<sound>` rows -> Qwen2."""
    ids = batch["input_ids"]
    embeds = decoder.embed(params["decoder"], config.decoder, ids)  # b t d
    if "input_features" in batch:
        with jax.named_scope("audio"):
            hidden = whisper_encoder.forward(
                params["encoder"], config.encoder, batch["input_features"], batch["key_lengths"]
            )  # w t da
            audio = projector.forward(params["projector"], config.projector, hidden)  # w t d
        embeds = place_audio(embeds, ids == config.audio_token_id, audio, batch["audio_valid"])
    out, _ = decoder.forward(
        params["decoder"], config.decoder, embeds, start=_start(batch["attention_mask"]), logits="none"
    )
    nll, n = _window_nll(params["decoder"], config.decoder, out.hidden, batch["labels"])
    return nll, n, jnp.zeros((), jnp.float32)


def thinker_sums(
    params: dict, config: thinker.ThinkerConfig, batch: dict
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Qwen3-Omni Thinker: (summed NLL, counted targets, router load-balancing loss over attended tokens)."""
    ids, mask, text = batch["input_ids"], batch["attention_mask"], config.text
    embeds = decoder.embed(params["thinker"], text, ids)
    if "input_features" in batch:
        with jax.named_scope("audio"):
            audio, valid = aut_encoder.forward_padded(
                params["audio_encoder"], config.audio, batch["input_features"], batch["audio_lengths"]
            )  # n k d, n k
        valid = valid & batch["audio_present"][:, None]
        embeds = place_audio(embeds, ids == config.tokens.audio_token_id, audio, valid)
    positions = jnp.moveaxis(batch["positions"], 1, 0)  # b 3 t -> 3 b t
    out, _ = decoder.forward(
        params["thinker"], text, embeds, positions=positions, start=_start(mask),
        router_logits=bool(text.moe_layers), logits="none",
    )  # fmt: skip
    nll, n = _window_nll(params["thinker"], text, out.hidden, batch["labels"])
    if out.router_logits is None:
        return nll, n, jnp.zeros((), jnp.float32)
    routers = out.router_logits.reshape(len(text.moe_layers), -1, text.num_experts)  # r (b t) E
    return nll, n, load_balancing_loss(routers, mask.reshape(-1), text.num_experts_per_tok)


def af3_batch(config: af3.Config, inputs: dict) -> dict[str, np.ndarray]:
    """AudioFlamingo3 processor outputs (+ labels) -> the arrays `af3_sums` reads (checked as inference
    checks them): conv key lengths and the valid pooled frames of every window."""
    ids = np.asarray(inputs["input_ids"])
    batch = {k: np.asarray(inputs[k]) for k in ("input_ids", "attention_mask", "labels")}
    if inputs.get("input_features") is None:
        af3.check_audio_tokens(ids, np.zeros((0,), np.int64), config.audio_token_id)
        return batch
    features = np.asarray(inputs["input_features"], np.float32)
    lengths = whisper_encoder.check_inputs(
        config.encoder, features, inputs["input_features_mask"], features.dtype
    )
    tokens = whisper_encoder.output_lengths(config.encoder, lengths)
    af3.check_audio_tokens(ids, tokens, config.audio_token_id)
    return batch | {
        "input_features": features,
        "key_lengths": whisper_encoder.conv_lengths(lengths).astype(np.int32),
        "audio_valid": np.arange(config.encoder.max_source_positions // 2) < tokens[:, None],
    }


def thinker_batch(config: thinker.ThinkerConfig, inputs: dict) -> dict[str, np.ndarray]:
    """Qwen3-Omni processor outputs (+ labels) -> the arrays `thinker_sums` reads: MRoPE positions (b 3 t),
    features padded to whole attention windows, each clip's length and presence."""
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    ids, mask, features, lengths = thinker.check_inputs(config, model_inputs)
    positions, _ = rope_index(config.tokens, ids, mask, audio_lengths=lengths)
    batch = {
        "input_ids": ids,
        "attention_mask": mask.astype(np.int32),
        "labels": np.asarray(inputs["labels"]),
        "positions": np.moveaxis(positions, 0, 1),
    }
    if features is None:
        return batch
    frames = aut_encoder.bucket_frames(config.audio, features.shape[2])
    return batch | {
        "input_features": np.pad(features, ((0, 0), (0, 0), (0, frames - features.shape[2]))),
        "audio_lengths": lengths.astype(np.int32),
        "audio_present": np.ones(len(lengths), bool),
    }


def _thinker_aux(hf_config: dict) -> float:
    """router_aux_loss_coef when the text config enables output_router_logits (HF reads only text_config)."""
    text = hf_config.get("thinker_config", hf_config)["text_config"]
    return float(text.get("router_aux_loss_coef", 0.001)) if text.get("output_router_logits") else 0.0


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    hf_class: str  # the transformers class whose loss this reproduces
    maps: tuple[CheckpointMap, ...]
    system: ModuleType
    config_class: type
    processor_class: type
    sums: Callable[[dict, Any, dict], tuple[jax.Array, jax.Array, jax.Array]]
    batch: Callable[[Any, dict], dict]  # (config, processor outputs + labels) -> the arrays `sums` reads
    aux_coef: Callable[[dict], float] = lambda hf_config: 0.0  # HF config -> router aux loss coefficient
    not_trainable: tuple[str, ...] = ()  # parameter paths transformers keeps frozen (requires_grad=False)
    audio_layout: str = "windows"  # windows (AF3: 30-s log-mel windows) | clips (Thinker: padded clips)
    decoder: str = "decoder"  # the top-level part holding the language model (LoRA's targets)


FAMILIES = (
    Family(
        "audioflamingo3", "AudioFlamingo3ForConditionalGeneration", af3_checkpoint.MAPS, af3, af3.Config,
        AudioFlamingo3Processor, af3_sums, af3_batch, not_trainable=("encoder/pos_embed",),
    ),
    Family(
        "qwen3_omni", "Qwen3OmniMoeThinkerForConditionalGeneration", omni_checkpoint.MAPS, thinker,
        thinker.ThinkerConfig, Qwen3OmniProcessor, thinker_sums, thinker_batch, _thinker_aux,
        audio_layout="clips", decoder="thinker",
    ),
)  # fmt: skip


def family_of(model_type: str | None = None, hf_class: str | None = None) -> Family:
    """The training family of a config.json model_type or a transformers class name."""
    for f in FAMILIES:
        if model_type in (m.model_type for m in f.maps) or hf_class == f.hf_class:
            return f
    known = sorted({m.model_type for f in FAMILIES for m in f.maps})
    raise ValueError(f"training supports model types {known}; got {model_type or hf_class!r}")


@dataclasses.dataclass
class TrainModel:
    family: Family
    path: Path
    hf_config: dict
    config: Any
    params: dict  # the trained system's parts only
    processor: Any

    @property
    def aux_coef(self) -> float:
        return self.family.aux_coef(self.hf_config)


def host_params(path: Path, family: Family, dtype: str) -> tuple[dict, dict]:
    """(HF config dict, numpy parameters) of an HF folder or its omni_jax conversion, read on the host (each
    process then places its shards: nothing lands on another process's device)."""
    hf_config = read_hf_config(path)
    cmap = find_map(family.maps, hf_config, f"{path}/config.json")
    if (path / MANIFEST).is_file():
        _, checkpoint, _ = open_jax(path, cmap)
        paths, read = checkpoint.params, checkpoint.read
    else:
        _, source, plan = plan_hf(path, cmap)
        paths, read = plan.specs, lambda p: plan.build(p, source.read, np.dtype(dtype))
    params: dict = {}
    for p in paths:
        set_path(params, p, np.asarray(read(p)).astype(dtype))
    return hf_config, params


def load(path, dtype: str = "float32") -> TrainModel:
    """A checkpoint folder (HF or omni_jax conversion) ready to train: float32 master weights by default."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"model {path}: no config.json (expected an HF folder or an omni_jax conversion)")
    fam = family_of(read_hf_config(path).get("model_type"))
    hf_config, params = host_params(path, fam, dtype)
    config = fam.config_class.from_hf(hf_config)
    if missing := [name for name in fam.system.param_specs(config) if name not in params]:
        raise ValueError(f"{path}: the checkpoint has no weights for {missing}")
    params = {name: params[name] for name in fam.system.param_specs(config)}
    return TrainModel(fam, path, hf_config, config, params, fam.processor_class.from_pretrained(path))


def mean_loss(family: Family, config: Any, params: dict, batch: dict, aux_coef: float = 0.0) -> jax.Array:
    """transformers' `out.loss` of one batch: token-mean NLL plus aux_coef times the router aux loss."""
    nll, n, aux = family.sums(params, config, batch)
    return nll / jnp.maximum(n, 1) + aux_coef * aux
