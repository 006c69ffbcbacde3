"""The RoPE decoder family: Qwen2, Qwen3 (dense), Qwen3-MoE, the Qwen3-Omni Thinker text model (MoE,
interleaved MRoPE, deepstack inputs) and Talker (MoE + sigmoid-gated shared expert), as one pure function.

    config = Config.from_hf(hf_config)                # Qwen2 / Qwen3 / Qwen3-MoE / Qwen3-Omni text configs
    params = hf_to_params(state, hf_rules(config), param_specs(config))
    out, cache = forward(params, config, input_ids)   # out.logits: b t vocab

`forward` takes token ids (b t) or embeddings (b t d), optional positions (b t, or 3 b t for MRoPE; 1-D RoPE
is the case of equal rows), per-row left padding (`start`), an optional KV cache (omni_jax.inference.cache)
that it writes at `cache.index`, additive per-layer inputs (deepstack, n b t d, added after layers 0..n-1) and
the indices of hidden states to return (transformers' `hidden_states` numbering: 0 the embeddings, i the
output of layer i-1 before deepstack, num_layers the final-normed output).

Layers run under `lax.scan`; the feed-forward weights are stacked per kind (`mlp` over the dense layers, `moe`
over the sparse ones, in layer order), so dense/MoE mixes keep the scan (a `lax.cond` picks the kind).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert.keymap import EXPERTS, LINEAR, Rule, hf_to_params
from omni_jax.inference.cache import KVCache, left_pad_start
from omni_jax.nn.attention import attention, cache_attention
from omni_jax.nn.layers import linear, linear_spec, rms_norm, rms_norm_spec
from omni_jax.nn.moe import MOE_IMPLS, gated_mlp, gated_mlp_spec, moe, moe_spec
from omni_jax.nn.packed import pack
from omni_jax.nn.params import ParamSpec, stacked
from omni_jax.nn.rope import apply_rope, mrope_angles, rope_angles, rope_cos_sin, rope_inv_freq
from omni_jax.parity import LOGITS_ATOL, MODULE_ATOL, ParityCase
from omni_jax.sharding import constrain

ACT_AXES = ("batch", "length", "act_embed")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP width
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    mrope_section: tuple[int, ...] | None = None  # interleaved MRoPE (3-row positions) when set
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sparse_layers: tuple[bool, ...] = ()  # per layer: MoE (True) or dense MLP
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    shared_expert_intermediate_size: int = 0  # > 0: sigmoid-gated shared expert (Talker)
    embed: bool = True  # token embedding table (the Talker feeds embeddings only)
    lm_head: bool = True  # False: the model ends at the final norm (bare text models)
    tie_word_embeddings: bool = False
    moe_impl: str = "ragged"  # ragged | dense

    def __post_init__(self):
        problems = []
        if self.num_heads % self.num_kv_heads:
            problems.append(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if len(self.sparse_layers) != self.num_layers:
            problems.append(
                f"sparse_layers has {len(self.sparse_layers)} entries for {self.num_layers} layers"
            )
        if any(self.sparse_layers) and not 0 < self.num_experts_per_tok <= self.num_experts:
            problems.append(f"top-k {self.num_experts_per_tok} must lie in 1..num_experts {self.num_experts}")
        if self.moe_impl not in MOE_IMPLS:
            problems.append(f"moe_impl {self.moe_impl!r} not in {MOE_IMPLS}")
        if self.tie_word_embeddings and self.lm_head and not self.embed:
            problems.append("a tied lm_head needs the embedding table")
        if problems:
            raise ValueError("invalid decoder config: " + "; ".join(problems))

    @classmethod
    def from_hf(cls, hf: Any) -> Config:
        """From a Qwen2 / Qwen3 / Qwen3-MoE / Qwen3-Omni thinker-text or talker-text config (object, dict)."""
        c = hf if isinstance(hf, dict) else hf.to_dict()
        model_type = c.get("model_type", "")
        if model_type not in _FAMILIES:
            raise ValueError(f"unsupported decoder model_type {model_type!r}; supported: {sorted(_FAMILIES)}")
        qwen2, talker = model_type == "qwen2", model_type == "qwen3_omni_moe_talker_text"
        bare = talker or model_type == "qwen3_omni_moe_talker_code_predictor"  # embeddings in, hidden out
        if "sliding_attention" in (c.get("layer_types") or ()) or (
            model_type == "qwen3_moe" and c.get("use_sliding_window")
        ):
            raise ValueError(f"{model_type}: sliding-window attention is not supported")
        rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"{model_type}: only the default RoPE type is supported, got {rope}")
        n_layers, heads = c["num_hidden_layers"], c["num_attention_heads"]
        n_experts = c.get("num_experts", c.get("num_local_experts", 0)) or 0
        step, dense_only = c.get("decoder_sparse_step", 1) or 1, set(c.get("mlp_only_layers") or ())
        sparse = tuple(
            talker or (n_experts > 0 and i not in dense_only and (i + 1) % step == 0) for i in range(n_layers)
        )
        multimodal = model_type in ("qwen3_omni_moe_text", "qwen3_omni_moe_talker_text")
        return cls(
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            intermediate_size=c["intermediate_size"],
            hidden_act=c.get("hidden_act", "silu"),
            rms_norm_eps=c.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
            mrope_section=tuple(rope.get("mrope_section", (24, 20, 20))) if multimodal else None,
            qkv_bias=True if qwen2 else bool(c.get("attention_bias", False)),
            o_bias=False if qwen2 else bool(c.get("attention_bias", False)),
            qk_norm=not qwen2,
            sparse_layers=sparse,
            num_experts=n_experts if any(sparse) else 0,
            num_experts_per_tok=c.get("num_experts_per_tok", 0) if any(sparse) else 0,
            moe_intermediate_size=c.get("moe_intermediate_size", 0) if any(sparse) else 0,
            norm_topk_prob=bool(c.get("norm_topk_prob", True)),
            shared_expert_intermediate_size=c.get("shared_expert_intermediate_size", 0) if talker else 0,
            embed=not bare,
            lm_head=not bare,
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        )

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.sparse_layers) if s)

    @property
    def dense_layers(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.sparse_layers) if not s)


_FAMILIES = (
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "qwen3_omni_moe_text",
    "qwen3_omni_moe_talker_text",
    "qwen3_omni_moe_talker_code_predictor",
)


# ---------------------------------------------------------------- parameters


def param_specs(config: Config) -> dict:
    c = config
    d, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    attn = {
        "q": linear_spec(d, q, bias=c.qkv_bias, axes=("embed", "heads")),
        "k": linear_spec(d, kv, bias=c.qkv_bias, axes=("embed", "kv_heads")),
        "v": linear_spec(d, kv, bias=c.qkv_bias, axes=("embed", "kv_heads")),
        "o": linear_spec(q, d, bias=c.o_bias, axes=("heads", "embed")),
    }
    if c.qk_norm:
        attn["q_norm"] = rms_norm_spec(c.head_dim, None)
        attn["k_norm"] = rms_norm_spec(c.head_dim, None)
    layer = {"input_norm": rms_norm_spec(d), "attn": attn, "post_norm": rms_norm_spec(d)}
    specs: dict = {"layers": stacked(layer, c.num_layers), "norm": rms_norm_spec(d)}
    if c.dense_layers:
        specs["mlp"] = stacked(gated_mlp_spec(d, c.intermediate_size), len(c.dense_layers))
    if c.moe_layers:
        block = moe_spec(d, c.num_experts, c.moe_intermediate_size, c.shared_expert_intermediate_size)
        specs["moe"] = stacked(block, len(c.moe_layers))
    if c.embed:
        specs["embed"] = {"embedding": ParamSpec((c.vocab_size, d), ("vocab", "embed"))}
    if c.lm_head and not c.tie_word_embeddings:
        specs["lm_head"] = linear_spec(d, c.vocab_size, bias=False, axes=("embed", "vocab"))
    return specs


def hf_rules(config: Config, prefix: str = "") -> list[Rule]:
    """Keys of `{prefix}model.*` and `{prefix}lm_head.weight` (prefix "" for *ForCausalLM, "thinker." or
    "talker." inside Qwen3-Omni). Experts in the transformers-v5 fused layout (`mlp.experts.gate_up_proj`
    (E, 2I, D), `down_proj` (E, D, I)); `omni_jax.convert.families.expert_layouts` adds the hub's per-expert
    keys. With dense and MoE layers mixed, `{layer}` in the feed-forward keys counts layers of that kind
    (`hf_state_to_params` renumbers)."""
    body, layer = f"{prefix}model.", f"{prefix}model.layers.{{layer}}."
    rules = [
        Rule(f"{layer}input_layernorm.weight", "layers/input_norm/scale"),
        Rule(f"{layer}post_attention_layernorm.weight", "layers/post_norm/scale"),
        Rule(f"{body}norm.weight", "norm/scale"),
    ]
    for name in ("q", "k", "v", "o"):
        rules.append(Rule(f"{layer}self_attn.{name}_proj.weight", f"layers/attn/{name}/kernel", LINEAR))
        if config.qkv_bias and name != "o" or config.o_bias and name == "o":
            rules.append(Rule(f"{layer}self_attn.{name}_proj.bias", f"layers/attn/{name}/bias"))
    if config.qk_norm:
        rules += [
            Rule(f"{layer}self_attn.{n}_norm.weight", f"layers/attn/{n}_norm/scale") for n in ("q", "k")
        ]
    if config.dense_layers:
        rules += [
            Rule(f"{layer}mlp.{n}_proj.weight", f"mlp/{n}/kernel", LINEAR) for n in ("gate", "up", "down")
        ]
    if config.moe_layers:
        rules += [
            Rule(f"{layer}mlp.gate.weight", "moe/router/kernel", LINEAR),
            Rule(f"{layer}mlp.experts.gate_up_proj", "moe/experts/gate_up", EXPERTS),
            Rule(f"{layer}mlp.experts.down_proj", "moe/experts/down", EXPERTS),
        ]
        if config.shared_expert_intermediate_size:
            rules += [
                Rule(f"{layer}mlp.shared_expert.{n}_proj.weight", f"moe/shared/{n}/kernel", LINEAR)
                for n in ("gate", "up", "down")
            ]
            rules.append(Rule(f"{layer}mlp.shared_expert_gate.weight", "moe/shared_gate/kernel", LINEAR))
    if config.embed:
        rules.append(Rule(f"{body}embed_tokens.weight", "embed/embedding"))
    if config.lm_head and not config.tie_word_embeddings:
        rules.append(Rule(f"{prefix}lm_head.weight", "lm_head/kernel", LINEAR))
    return rules


def hf_state_to_params(state: dict, config: Config, prefix: str = "", dtype: Any = None) -> dict:
    """An HF state dict (in-memory layout) to parameters; feed-forward keys of mixed dense/MoE models are
    renumbered to their kind's stack index first."""
    layer = f"{prefix}model.layers."
    index = {
        **{l: i for i, l in enumerate(config.moe_layers)},
        **{l: i for i, l in enumerate(config.dense_layers)},
    }

    def rename(key: str) -> str:
        if not key.startswith(layer) or ".mlp." not in key:
            return key
        n, rest = key[len(layer) :].split(".", 1)
        return f"{layer}{index[int(n)]}.{rest}"

    return hf_to_params(
        {rename(k): v for k, v in state.items()}, hf_rules(config, prefix), param_specs(config), dtype
    )


# ---------------------------------------------------------------- forward


def unstack_layers(params: dict) -> dict:
    """The same parameters with the layer stacks (`layers`, `mlp`, `moe`) as tuples of per-layer trees.
    `forward` then unrolls the layers instead of scanning; on CPU this avoids XLA copying each layer's slice
    of the stacked weights before its matmuls (decode reads every weight once per step)."""

    def split(tree):
        n = jax.tree.leaves(tree)[0].shape[0]
        return tuple(jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n))

    return {k: split(v) if k in ("layers", "mlp", "moe") else v for k, v in params.items()}


def pack_linears(params: dict, config: Config) -> dict:
    """The same parameters with the attention, MLP, expert and lm_head kernels as `PackedKernel`s
    (`nn.packed`: ~2x faster CPU decode; packed experts run only the experts tokens pick); a tied lm_head
    gets a packed copy of the embedding. Stacked or unstacked layers; routers stay as they are. For float32
    CPU inference."""

    def pack_tree(name, tree):
        if isinstance(tree, tuple):  # unstacked layers
            return tuple(pack_tree(name, t) for t in tree)
        if not isinstance(tree, dict) or name in ("embed", "router", "shared_gate"):
            return tree
        if "kernel" in tree:
            return {**tree, "kernel": pack(tree["kernel"])}
        if name == "experts":
            return {k: pack(v) for k, v in tree.items()}
        return {k: pack_tree(k, v) for k, v in tree.items()}

    packed = pack_tree("", params)
    if config.lm_head and config.tie_word_embeddings:
        packed["lm_head"] = {"kernel": pack(params["embed"]["embedding"].T)}
    return packed


def cpu_layout(params: dict, config: Config) -> dict:
    """The parameters laid out for CPU inference: unstacked layers with packed linears (float32 decode at
    1-8 rows: ~1.3x (b1) to ~1.7x (b8) faster than `unstack_layers` alone)."""
    return pack_linears(unstack_layers(params), config)


class Output(NamedTuple):
    logits: jax.Array | None  # b t vocab ("all"), b vocab ("last"), None ("none")
    hidden: jax.Array  # b t d, final-normed
    hidden_states: dict[int, jax.Array]  # requested indices (transformers numbering) -> b t d


def embed(params: dict, config: Config, tokens: jax.Array) -> jax.Array:
    """Token ids b t -> embeddings b t d."""
    return jnp.take(params["embed"]["embedding"], tokens, axis=0)


def unembed(params: dict, config: Config, hidden: jax.Array) -> jax.Array:
    """Final-normed hidden ... d -> logits ... vocab (activation dtype)."""
    if "lm_head" not in params:  # tied, unpacked
        return jnp.matmul(hidden, params["embed"]["embedding"].astype(hidden.dtype).T)
    return linear(params["lm_head"], hidden)


def rope_tables(config: Config, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """positions b t (1-D) or 3 b t (MRoPE rows T, H, W) -> cos, sin b t head_dim."""
    inv_freq = rope_inv_freq(config.head_dim, config.rope_theta)
    if positions.ndim == 3:
        if config.mrope_section is None:
            raise ValueError("3-row positions need an MRoPE config (mrope_section)")
        return rope_cos_sin(mrope_angles(positions, inv_freq, config.mrope_section), dtype)
    return rope_cos_sin(rope_angles(positions, inv_freq), dtype)


def _attention(p: dict, config: Config, x, cos, sin, attend) -> tuple[jax.Array, Any]:
    """Self-attention of x (b t d); `attend(q, k, v)` stores k, v where they go and attends to them."""
    b, t, _ = x.shape
    q = linear(p["q"], x).reshape(b, t, config.num_heads, config.head_dim)
    k = linear(p["k"], x).reshape(b, t, config.num_kv_heads, config.head_dim)
    v = linear(p["v"], x).reshape(b, t, config.num_kv_heads, config.head_dim)
    if config.qk_norm:
        q = rms_norm(p["q_norm"], q, config.rms_norm_eps)
        k = rms_norm(p["k_norm"], k, config.rms_norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out, carry = attend(q, k, v)
    return linear(p["o"], out.reshape(b, t, -1)), carry


def _ffn(params: dict, config: Config, x: jax.Array, sparse: jax.Array, index: jax.Array) -> jax.Array:
    """The MoE or dense MLP at `index` of its kind's stack (a cond when both kinds exist)."""

    def pick(tree):
        if isinstance(tree, tuple):  # unstacked layout: `index` is a Python int
            return tree[index]
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False), tree)

    def run_moe(x):
        p = pick(params["moe"])
        return moe(
            p, x, top_k=config.num_experts_per_tok, norm_topk_prob=config.norm_topk_prob,
            act=config.hidden_act, impl=config.moe_impl,
        )  # fmt: skip

    def run_mlp(x):
        return gated_mlp(pick(params["mlp"]), x, config.hidden_act)

    if not config.dense_layers:
        return run_moe(x)
    if not config.moe_layers:
        return run_mlp(x)
    if isinstance(sparse, bool):
        return run_moe(x) if sparse else run_mlp(x)
    return jax.lax.cond(sparse, run_moe, run_mlp, x)


def forward(
    params: dict,
    config: Config,
    inputs: jax.Array,
    *,
    positions: jax.Array | None = None,
    start: jax.Array | None = None,
    cache: KVCache | None = None,
    layer_inputs: jax.Array | None = None,
    hidden_layers: tuple[int, ...] = (),
    logits: str = "all",
) -> tuple[Output, KVCache | None]:
    """Run the decoder on a chunk. inputs: token ids b t or embeddings b t d; positions default to slot-start;
    start (b, int): first valid slot of each left-padded row (ignored with a cache, which carries it); with a
    cache the chunk is written at slots cache.index.. and attends to everything before it."""
    c = config
    if logits not in ("all", "last", "none"):
        raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
    if logits != "none" and not c.lm_head:
        raise ValueError("this decoder has no lm_head (it ends at the final norm): pass logits='none'")
    if bad := [i for i in hidden_layers if not 0 <= i <= c.num_layers]:
        raise ValueError(f"hidden_layers {bad} out of range 0..{c.num_layers}")
    x = embed(params, c, inputs) if jnp.issubdtype(inputs.dtype, jnp.integer) else inputs
    x = x.astype(params["norm"]["scale"].dtype)  # the activation dtype is the parameters'
    x = constrain(x, ACT_AXES)
    b, t, _ = x.shape
    index = jnp.zeros((), jnp.int32) if cache is None else cache.index
    start = (jnp.zeros((b,), jnp.int32) if start is None else start) if cache is None else cache.start
    slots = index + jnp.arange(t)
    if positions is None:
        positions = (slots[None, :] - start[:, None]).astype(jnp.float32)
    cos, sin = rope_tables(c, positions, x.dtype)
    key_slots = jnp.arange(t if cache is None else cache.length)
    mask = (key_slots[None, None, :] >= start[:, None, None]) & (
        key_slots[None, None, :] <= slots[None, :, None]
    )

    sparse = jnp.asarray(c.sparse_layers)
    kind = [(c.moe_layers if s else c.dense_layers).index(i) for i, s in enumerate(c.sparse_layers)]
    kind_index = jnp.asarray(kind)
    mid = tuple(i for i in hidden_layers if 0 < i < c.num_layers)

    def body(carry, xs):
        x, kv, picked = carry
        p, l, is_sparse, fi = xs

        def attend(q, k, v):
            if kv is None:
                return attention(q, k, v, mask=mask[:, None]), None
            kc = jax.lax.dynamic_update_slice(kv[0], k[None].astype(kv[0].dtype), (l, 0, index, 0, 0))
            vc = jax.lax.dynamic_update_slice(kv[1], v[None].astype(kv[1].dtype), (l, 0, index, 0, 0))
            if t == 1:  # decode: read the layer in place
                return cache_attention(q, kc, vc, l, start, index + 1), (kc, vc)
            return attention(q, kc[l].astype(q.dtype), vc[l].astype(q.dtype), mask=mask[:, None]), (kc, vc)

        h, kv = _attention(p["attn"], c, rms_norm(p["input_norm"], x, c.rms_norm_eps), cos, sin, attend)
        x = x + h
        x = x + _ffn(params, c, rms_norm(p["post_norm"], x, c.rms_norm_eps), is_sparse, fi)
        picked = tuple(jnp.where(l == i - 1, x, s) for i, s in zip(mid, picked, strict=True))
        if layer_inputs is not None:
            n = layer_inputs.shape[0]
            x = x + jnp.where(l < n, layer_inputs[jnp.minimum(l, n - 1)].astype(x.dtype), 0)
        return (constrain(x, ACT_AXES), kv, picked), None

    kv0 = None if cache is None else (cache.k, cache.v)
    x0 = x
    carry = (x, kv0, tuple(x0 for _ in mid))
    if isinstance(params["layers"], tuple):  # unstacked: one traced copy per layer, no weight slicing
        for l, p in enumerate(params["layers"]):
            carry, _ = body(carry, (p, l, c.sparse_layers[l], kind[l]))
    else:
        xs = (params["layers"], jnp.arange(c.num_layers), sparse, kind_index)
        carry, _ = jax.lax.scan(body, carry, xs)
    x, kv, picked = carry
    hidden = rms_norm(params["norm"], x, c.rms_norm_eps)
    states = {0: x0, c.num_layers: hidden, **dict(zip(mid, picked, strict=True))}
    out_logits = None
    if logits != "none":
        out_logits = unembed(params, c, hidden if logits == "all" else hidden[:, -1])
    if cache is not None:
        cache = dataclasses.replace(cache, k=kv[0], v=kv[1], index=index + t)
    return Output(out_logits, hidden, {i: states[i] for i in hidden_layers}), cache


# ---------------------------------------------------------------- parity


def from_torch(module: Any, **overrides: Any) -> tuple[Config, dict]:
    """Config and parameters of a transformers decoder module (its state dict, in-memory layout)."""
    config = dataclasses.replace(Config.from_hf(module.config), **overrides)
    state = dict(module.state_dict())
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the embedding itself, shared
    if not any(k.startswith("model.") for k in state):  # a bare text model: keys without "model."
        state = {f"model.{k}": v for k, v in state.items()}
    return config, jax.tree.map(jnp.asarray, hf_state_to_params(state, config))


def _causal_lm_case(module, input_ids, attention_mask=None, position_ids=None):
    import torch

    config, params = from_torch(module)
    with torch.no_grad():
        ref = module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    ids = jnp.asarray(input_ids.numpy())
    start = None if attention_mask is None else jnp.asarray(left_pad_start(attention_mask.numpy(), ids.shape))
    positions = None if position_ids is None else jnp.asarray(position_ids.numpy(), jnp.float32)
    out, _ = forward(params, config, ids, positions=positions, start=start)
    return masked_rows(ref.numpy(), np.asarray(out.logits), attention_mask)


def _thinker_text_case(module, input_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None):
    """Qwen3OmniMoeThinkerTextModel: last_hidden_state, with 3-row positions."""
    import torch

    config, params = from_torch(module, lm_head=False)
    with torch.no_grad():
        ref = module(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
        ).last_hidden_state
    inputs = jnp.asarray((input_ids if inputs_embeds is None else inputs_embeds).numpy())
    start = (
        None
        if attention_mask is None
        else jnp.asarray(left_pad_start(attention_mask.numpy(), inputs.shape[:2]))
    )
    positions = None if position_ids is None else jnp.asarray(position_ids.numpy(), jnp.float32)
    if positions is not None and positions.ndim == 3 and positions.shape[0] == 4:
        positions = positions[1:]  # row 0 is transformers' text positions (mask bookkeeping only)
    out, _ = forward(params, config, inputs, positions=positions, start=start, logits="none")
    return masked_rows(ref.numpy(), np.asarray(out.hidden), attention_mask)


def masked_rows(reference: np.ndarray, ours: np.ndarray, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    """Zero the outputs of left-padding positions (unused garbage in both implementations); the mask may be a
    numpy array or a CPU torch tensor."""
    if attention_mask is None:
        return reference, ours
    keep = np.asarray(attention_mask).astype(bool)[..., None]
    return np.where(keep, reference, 0), np.where(keep, ours, 0)


PARITY = {
    "Qwen2ForCausalLM": ParityCase(_causal_lm_case, LOGITS_ATOL),
    "Qwen3ForCausalLM": ParityCase(_causal_lm_case, LOGITS_ATOL),
    "Qwen3MoeForCausalLM": ParityCase(_causal_lm_case, LOGITS_ATOL),
    "Qwen3OmniMoeThinkerTextModel": ParityCase(_thinker_text_case, MODULE_ATOL),
}


def generation_ids(generation_config) -> tuple[tuple[int, ...], int]:
    """(EOS ids, pad id) of a transformers GenerationConfig (or its dict), with transformers' fallbacks."""
    get = (
        generation_config.get
        if isinstance(generation_config, dict)
        else lambda k: getattr(generation_config, k, None)
    )
    eos = get("eos_token_id")
    eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    pad = get("pad_token_id")
    return eos, pad if pad is not None else (eos[0] if eos else 0)


def reference_generate(module, inputs: dict, max_new_tokens: int, eos, pad) -> np.ndarray:
    """transformers' greedy new tokens (b n) for torch `inputs` (None values left out), same EOS / pad ids."""
    import torch

    given = {k: v for k, v in inputs.items() if v is not None}
    with torch.no_grad():
        out = module.generate(
            **given, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=list(eos) or None, pad_token_id=pad,
        )  # fmt: skip
    return out[:, given["input_ids"].shape[1] :].numpy()


def trim_to(reference: np.ndarray, ours: np.ndarray, pad: int) -> np.ndarray:
    """Drop our all-pad columns past the reference's length (transformers stops once every row has ended)."""
    ours = np.asarray(ours)
    return ours[:, : reference.shape[1]] if (ours[:, reference.shape[1] :] == pad).all() else ours


def _generate_case(module, input_ids, attention_mask, max_new_tokens):
    """Greedy tokens (b n) of transformers' generate and of omni_jax.inference.generate, same EOS/pad ids."""
    from omni_jax.inference.generate import generate

    config, params = from_torch(module)
    eos, pad = generation_ids(module.generation_config)
    ref = reference_generate(
        module, dict(input_ids=input_ids, attention_mask=attention_mask), max_new_tokens, eos, pad
    )
    ours = generate(
        params, config, input_ids.numpy(), attention_mask=attention_mask.numpy(),
        max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=pad,
    )  # fmt: skip
    return ref, trim_to(ref, ours, pad)


GENERATE = {name: _generate_case for name in ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM")}
