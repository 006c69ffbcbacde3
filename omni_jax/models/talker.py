"""Qwen3-Omni Talker (`Qwen3OmniMoeTalkerForConditionalGeneration`): the MoE decoder body, its codec embedding
and head, the two ResizeMLPs that carry Thinker states into it, and the code predictor that adds the 15
residual codebooks of each frame.

    config = TalkerConfig.from_hf(hf_config["talker_config"])
    params = hf_to_params(state, hf_rules(config, "talker."), param_specs(config))
    codes, feedback = predict_codes(params, config, hidden, c0, key, sampling)   # one frame, b G-1 codes

Parameters: `model` (decoder body, embeddings in, final-normed hidden out), `codec_embedding`, `codec_head`,
`text_projection`, `hidden_projection`, and `code_predictor` with its decoder `model`, the stacked residual
embeddings `embeddings` (G-1 V D) and heads `heads` (G-1 D V). The prompt construction and the decode loop
live with the family (omni_jax.families.qwen3_omni.speech).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from omni_jax.convert.keymap import LINEAR, Rule, linear_rules
from omni_jax.inference.sampling import Sampling, sample
from omni_jax.models import decoder
from omni_jax.nn.cache import init_cache
from omni_jax.nn.layers import activation, linear, linear_spec
from omni_jax.nn.params import ParamSpec

# codec control ids: name -> (talker_config key, released value; the class defaults lie outside the vocab)
CODEC_IDS = {
    "pad": ("codec_pad_id", 2148),
    "bos": ("codec_bos_id", 2149),
    "eos": ("codec_eos_token_id", 2150),
    "nothink": ("codec_nothink_id", 2155),
    "think_bos": ("codec_think_bos_id", 2156),
    "think_eos": ("codec_think_eos_id", 2157),
}


@dataclasses.dataclass(frozen=True)
class TalkerConfig:
    body: decoder.Config  # the MoE decoder (no embedding table, no lm_head)
    predictor: decoder.Config  # the code predictor's dense decoder
    num_code_groups: int
    thinker_hidden_size: int
    projection_size: int  # ResizeMLP width (text_config.intermediate_size)
    codec_ids: tuple[tuple[str, int], ...]  # CODEC_IDS names -> codec id
    speakers: tuple[tuple[str, int], ...]  # lower-case name -> codec id
    accept_hidden_layer: int

    def __post_init__(self):
        if self.body.hidden_size != self.predictor.hidden_size:
            raise ValueError(
                f"talker hidden_size {self.body.hidden_size} != code predictor hidden_size "
                f"{self.predictor.hidden_size} (there is no projection between them)"
            )
        if self.num_code_groups < 2:
            raise ValueError(f"num_code_groups must be >= 2, got {self.num_code_groups}")

    @classmethod
    def from_hf(cls, hf: Any) -> TalkerConfig:
        """From a Qwen3OmniMoeTalkerConfig (object or dict)."""
        c = hf if isinstance(hf, dict) else hf.to_dict()
        text, predictor = c["text_config"], c["code_predictor_config"]
        groups = c.get("num_code_groups", 32)
        if predictor.get("num_code_groups", groups) != groups:
            raise ValueError(
                f"talker num_code_groups {groups} != code predictor {predictor.get('num_code_groups')}"
            )
        return cls(
            body=decoder.Config.from_hf({**text, "model_type": "qwen3_omni_moe_talker_text"}),
            predictor=decoder.Config.from_hf(
                {**predictor, "model_type": "qwen3_omni_moe_talker_code_predictor"}
            ),
            num_code_groups=groups,
            thinker_hidden_size=c.get("thinker_hidden_size", 2048),
            projection_size=text["intermediate_size"],
            codec_ids=tuple((n, int(c.get(key, value))) for n, (key, value) in CODEC_IDS.items()),
            speakers=tuple(sorted((k.lower(), int(v)) for k, v in (c.get("speaker_id") or {}).items())),
            accept_hidden_layer=c.get("accept_hidden_layer", 18),
        )

    def codec_id(self, name: str) -> int:
        return dict(self.codec_ids)[name]

    def speaker_id(self, speaker: str) -> int:
        """The codec id of a speaker (case-insensitive); an error lists the known ones."""
        known = dict(self.speakers)
        if not isinstance(speaker, str) or speaker.lower() not in known:
            raise ValueError(f"unknown speaker {speaker!r}; this checkpoint has {sorted(known) or 'none'}")
        return known[speaker.lower()]

    @property
    def suppress_tokens(self) -> tuple[int, ...]:
        """transformers' talker suppression: the top 1024 codec ids except codec_eos."""
        v, eos = self.body.vocab_size, self.codec_id("eos")
        return tuple(i for i in range(max(v - 1024, 0), v) if i != eos)


# ---------------------------------------------------------------- parameters


def _resize_spec(config: TalkerConfig) -> dict:
    t, i, d = config.thinker_hidden_size, config.projection_size, config.body.hidden_size
    return {"fc1": linear_spec(t, i, bias=True), "fc2": linear_spec(i, d, bias=True)}


def param_specs(config: TalkerConfig) -> dict:
    d, v = config.body.hidden_size, config.body.vocab_size
    residual, vp = config.num_code_groups - 1, config.predictor.vocab_size
    return {
        "model": decoder.param_specs(config.body),
        "codec_embedding": {"embedding": ParamSpec((v, d), ("vocab", "embed"))},
        "codec_head": linear_spec(d, v, bias=False, axes=("embed", "vocab")),
        "text_projection": _resize_spec(config),
        "hidden_projection": _resize_spec(config),
        "code_predictor": {
            "model": decoder.param_specs(config.predictor),
            "embeddings": ParamSpec((residual, vp, d), ("layers", "vocab", "embed")),
            "heads": ParamSpec((residual, d, vp), ("layers", "embed", "vocab")),
        },
    }


def hf_rules(config: TalkerConfig, prefix: str = "") -> list[Rule]:
    """Keys of a `Qwen3OmniMoeTalkerForConditionalGeneration` under `prefix` ("talker." in the full model)."""
    cp = f"{prefix}code_predictor."

    def under(rules: list[Rule], path: str) -> list[Rule]:
        return [dataclasses.replace(r, jax=f"{path}/{r.jax}") for r in rules]

    rules = under(decoder.hf_rules(config.body, prefix), "model")
    rules.append(Rule(f"{prefix}model.codec_embedding.weight", "codec_embedding/embedding"))
    rules += linear_rules(f"{prefix}codec_head", "codec_head", bias=False)
    for name in ("text_projection", "hidden_projection"):
        for fc in ("fc1", "fc2"):
            rules += linear_rules(f"{prefix}{name}.linear_{fc}", f"{name}/{fc}")
    rules += under(decoder.hf_rules(config.predictor, cp), "code_predictor/model")
    rules += [
        Rule(f"{cp}model.codec_embedding.{{layer}}.weight", "code_predictor/embeddings"),
        Rule(f"{cp}lm_head.{{layer}}.weight", "code_predictor/heads", LINEAR),
    ]
    return rules


# ---------------------------------------------------------------- forward pieces


def project(p: dict, config: TalkerConfig, x: jax.Array) -> jax.Array:
    """ResizeMLP (text_projection / hidden_projection): thinker width ... t -> talker width ... d."""
    return linear(p["fc2"], activation(config.body.hidden_act)(linear(p["fc1"], x)))


def codec_embed(params: dict, codes: jax.Array) -> jax.Array:
    """Group-0 codec ids ... -> talker embeddings ... d."""
    return jnp.take(params["codec_embedding"]["embedding"], codes, axis=0)


def codec_logits(params: dict, hidden: jax.Array) -> jax.Array:
    """Final-normed talker hidden ... d -> codec logits ... vocab (float32)."""
    return linear(params["codec_head"], hidden).astype(jnp.float32)


def predict_codes(
    params: dict, config: TalkerConfig, hidden: jax.Array, c0: jax.Array, key: jax.Array, sampling: Sampling
) -> tuple[jax.Array, jax.Array]:
    """The code predictor on one frame: the talker's final-normed hidden (b d) that produced group-0 codes
    c0 (b) -> (groups 1..G-1 codes b G-1, the sum of all G group embeddings b d, the talker's next input
    before its text term). A fresh G-slot cache; group g draws with fold_in(key, g)."""
    cp, pc = params["code_predictor"], config.predictor
    first = codec_embed(params, c0)  # b d
    cache = init_cache(pc, hidden.shape[0], config.num_code_groups, first.dtype)
    out, cache = decoder.forward(
        cp["model"], pc, jnp.stack([hidden.astype(first.dtype), first], 1), cache=cache, logits="none"
    )

    def choose(h, g):  # group g + 1 from hidden h (b d)
        logits = jnp.matmul(h, cp["heads"][g].astype(h.dtype)).astype(jnp.float32)
        code = sample(logits, sampling, jax.random.fold_in(key, g + 1))
        return code, jnp.take(cp["embeddings"][g], code, axis=0)

    def group(carry, g):  # predicts group g + 1 and feeds its embedding
        h, cache, total = carry
        code, e = choose(h, g)
        out, cache = decoder.forward(cp["model"], pc, e[:, None], cache=cache, logits="none")
        return (out.hidden[:, -1], cache, total + e), code

    with jax.named_scope("code_predictor"):
        (h, _, total), codes = jax.lax.scan(
            group, (out.hidden[:, -1], cache, first), jnp.arange(config.num_code_groups - 2)
        )
        last, e = choose(h, config.num_code_groups - 2)
    return jnp.concatenate([codes.T, last[:, None]], axis=1), total + e
