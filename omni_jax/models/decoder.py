"""The RoPE decoder family: Qwen2, Qwen3 (dense), Qwen3-MoE, the Qwen3-Omni Thinker text model (MoE,
interleaved MRoPE, deepstack inputs) and Talker (MoE + sigmoid-gated shared expert), as one pure function.

    config = Config.from_hf(hf_config)                # Qwen2 / Qwen3 / Qwen3-MoE / Qwen3-Omni text configs
    params = hf_to_params(state, hf_rules(config), param_specs(config))   # omni_jax.convert.keymap
    out, cache = forward(params, config, input_ids)   # out.logits: b t vocab

`forward` takes token ids (b t) or embeddings (b t d), optional positions (b t, or 3 b t for MRoPE; 1-D RoPE
is the case of equal rows), per-row left padding (`start`), an optional KV cache (omni_jax.nn.cache)
that it writes at `cache.index`, additive per-layer inputs (deepstack, n b t d, added after layers 0..n-1) and
the indices of hidden states to return (transformers' `hidden_states` numbering: 0 the embeddings, i the
output of layer i-1 before deepstack, num_layers the final-normed output).

Training: `router_logits=True` also returns the MoE layers' raw router outputs (the load-balancing loss
reads them), and `Config.remat` names a `jax.checkpoint_policies` policy that rematerialises each scanned
layer in the backward pass.

Layers run under `lax.scan`; the feed-forward weights are stacked per kind (`mlp` over the dense layers, `moe`
over the sparse ones, in layer order), so dense/MoE mixes keep the scan (a `lax.cond` picks the kind).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange

from omni_jax import validation
from omni_jax.convert.keymap import EXPERTS, LINEAR, Rule
from omni_jax.nn.attention import BLOCKED_FROM, attention, cache_attention, causal_blocked_attention
from omni_jax.nn.cache import KVCache
from omni_jax.nn.layers import linear, linear_spec, rms_norm, rms_norm_spec
from omni_jax.nn.moe import MOE_IMPLS, gated_mlp, gated_mlp_spec, moe, moe_spec
from omni_jax.nn.moe import router_logits as moe_router_logits
from omni_jax.nn.packed import pack, pack_kernels
from omni_jax.nn.params import ParamSpec, stacked, unstack
from omni_jax.nn.rope import apply_rope, mrope_angles, rope_angles, rope_cos_sin, rope_inv_freq
from omni_jax.sharding import constrain

ACT_AXES = ("batch", "length", "act_embed")
# jax.checkpoint_policies that take no argument (Config.remat)
REMAT_POLICIES = (
    "everything_saveable",
    "nothing_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)


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
    remat: str | None = None  # a jax.checkpoint_policies name: remat each scanned layer (training)

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
        if self.remat is not None and self.remat not in REMAT_POLICIES:
            problems.append(f"remat {self.remat!r} not in {REMAT_POLICIES}")
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
        required = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        )
        validation.config_keys(f"{model_type} config", c, required)
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
    (E, 2I, D), `down_proj` (E, D, I)); `omni_jax.convert.parts.expert_layouts` adds the hub's per-expert
    keys. With dense and MoE layers mixed, each feed-forward rule lists the HF layer numbers of its stack."""
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
    ffn = []
    if config.dense_layers:
        ffn += [
            Rule(f"{layer}mlp.{n}_proj.weight", f"mlp/{n}/kernel", LINEAR) for n in ("gate", "up", "down")
        ]
    if config.moe_layers:
        ffn += [
            Rule(f"{layer}mlp.gate.weight", "moe/router/kernel", LINEAR),
            Rule(f"{layer}mlp.experts.gate_up_proj", "moe/experts/gate_up", EXPERTS),
            Rule(f"{layer}mlp.experts.down_proj", "moe/experts/down", EXPERTS),
        ]
        if config.shared_expert_intermediate_size:
            ffn += [
                Rule(f"{layer}mlp.shared_expert.{n}_proj.weight", f"moe/shared/{n}/kernel", LINEAR)
                for n in ("gate", "up", "down")
            ]
            ffn.append(Rule(f"{layer}mlp.shared_expert_gate.weight", "moe/shared_gate/kernel", LINEAR))
    rules += [_stack_layers(rule, config) for rule in ffn]
    if config.embed:
        rules.append(Rule(f"{body}embed_tokens.weight", "embed/embedding"))
    if config.lm_head and not config.tie_word_embeddings:
        rules.append(Rule(f"{prefix}lm_head.weight", "lm_head/kernel", LINEAR))
    return rules


def _stack_layers(rule: Rule, config: Config) -> Rule:
    """Dense (`mlp/`) and MoE (`moe/`) feed-forwards are stacked apart: with both kinds, a rule's stack
    index counts layers of its kind, so it names the HF layer numbers it covers."""
    layers = config.moe_layers if rule.jax.startswith("moe/") else config.dense_layers
    return rule if layers == tuple(range(len(layers))) else dataclasses.replace(rule, layers=layers)


# ---------------------------------------------------------------- forward


def unstack_layers(params: dict) -> dict:
    """The same parameters with the layer stacks (`layers`, `mlp`, `moe`) as tuples of per-layer trees.
    `forward` then unrolls the layers instead of scanning; on CPU this avoids XLA copying each layer's slice
    of the stacked weights before its matmuls (decode reads every weight once per step)."""
    return {k: unstack(v) if k in ("layers", "mlp", "moe") else v for k, v in params.items()}


def pack_linears(params: dict, config: Config) -> dict:
    """The same parameters with the attention, MLP, expert and lm_head kernels as `PackedKernel`s
    (`nn.packed`: ~2x faster CPU decode; packed experts run only the experts tokens pick); a tied lm_head
    gets a packed copy of the embedding. Stacked or unstacked layers; routers stay as they are. For float32
    CPU inference."""
    packed = pack_kernels(params)
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
    router_logits: jax.Array | None = None  # moe_layers b t experts (with router_logits=True)


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
    q, k, v = (rearrange(linear(p[n], x), "b t (h d) -> b t h d", d=config.head_dim) for n in "qkv")
    if config.qk_norm:
        q = rms_norm(p["q_norm"], q, config.rms_norm_eps)
        k = rms_norm(p["k_norm"], k, config.rms_norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out, carry = attend(q, k, v)
    return linear(p["o"], rearrange(out, "b t h d -> b t (h d)")), carry


def _ffn(params: dict, config: Config, x: jax.Array, sparse, stack_index) -> jax.Array:
    """The MoE or dense MLP at `stack_index` of its kind's stack (a cond when both kinds exist)."""

    def take(stack):
        if isinstance(stack, tuple):  # unstacked layout: `stack_index` is a Python int
            return stack[stack_index]
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, stack_index, keepdims=False), stack)

    def run_moe(x):
        stack, layer = params["moe"], None
        if isinstance(stack, tuple):
            p = stack[stack_index]
        else:  # the experts are read in place at stack_index, not sliced out of the stack whole
            p = {**take({k: v for k, v in stack.items() if k != "experts"}), "experts": stack["experts"]}
            layer = stack_index
        return moe(
            p, x, top_k=config.num_experts_per_tok, norm_topk_prob=config.norm_topk_prob,
            act=config.hidden_act, impl=config.moe_impl, layer=layer,
        )  # fmt: skip

    def run_mlp(x):
        return gated_mlp(take(params["mlp"]), x, config.hidden_act)

    if not config.dense_layers:
        return run_moe(x)
    if not config.moe_layers:
        return run_mlp(x)
    if isinstance(sparse, bool):
        return run_moe(x) if sparse else run_mlp(x)
    return jax.lax.cond(sparse, run_moe, run_mlp, x)


def _router_logits(params: dict, config: Config, x: jax.Array, ffn_index) -> jax.Array:
    """Raw router outputs b t experts of the MoE stack entry `ffn_index` (clamped: a dense layer's row is
    computed and dropped by the caller)."""
    kernel = params["moe"]["router"]["kernel"]
    return moe_router_logits(jax.lax.dynamic_index_in_dim(kernel, ffn_index, keepdims=False), x)


def _check_forward_args(config: Config, hidden_layers: tuple[int, ...], logits: str) -> None:
    if logits not in ("all", "last", "none"):
        raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
    if logits != "none" and not config.lm_head:
        raise ValueError("this decoder has no lm_head (it ends at the final norm): pass logits='none'")
    if bad := [i for i in hidden_layers if not 0 <= i <= config.num_layers]:
        raise ValueError(f"hidden_layers {bad} out of range 0..{config.num_layers}")


def _slots_and_mask(t: int, start: jax.Array, cache: KVCache | None) -> tuple[jax.Array, jax.Array]:
    """Cache slots of the chunk's t queries, and the causal, left-padding-aware key mask b t keys."""
    index = jnp.zeros((), jnp.int32) if cache is None else cache.index
    slots = index + jnp.arange(t)  # t
    keys = jnp.arange(t if cache is None else cache.length)
    mask = (keys[None, None, :] >= start[:, None, None]) & (keys[None, None, :] <= slots[None, :, None])
    return slots, mask


def _attend_fn(kv, layer, mask, start, cache: KVCache | None, t: int):
    """attend(q, k, v) for one layer: writes k, v into the stacked cache (if any) and attends over it."""

    def attend(q, k, v):
        if kv is None:
            return attention(q, k, v, mask=mask[:, None]), None
        at = (layer, 0, cache.index, 0, 0)
        k_all = jax.lax.dynamic_update_slice(kv[0], k[None].astype(kv[0].dtype), at)
        v_all = jax.lax.dynamic_update_slice(kv[1], v[None].astype(kv[1].dtype), at)
        if t == 1:  # decode: read the layer in place
            return cache_attention(q, k_all, v_all, layer, start, cache.index + 1), (k_all, v_all)
        k_l, v_l = k_all[layer].astype(q.dtype), v_all[layer].astype(q.dtype)
        if k_l.shape[1] >= BLOCKED_FROM:  # long prefill: memory linear in the length
            return causal_blocked_attention(q, k_l, v_l, start=start, offset=cache.index), (k_all, v_all)
        return attention(q, k_l, v_l, mask=mask[:, None]), (k_all, v_all)

    return attend


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
    router_logits: bool = False,
) -> tuple[Output, KVCache | None]:
    """Run the decoder on a chunk. inputs: token ids b t or embeddings b t d; positions default to slot-start;
    start (b, int): first valid slot of each left-padded row (ignored with a cache, which carries it); with a
    cache the chunk is written at slots cache.index.. and attends to everything before it."""
    c = config
    _check_forward_args(c, hidden_layers, logits)
    if router_logits and (not c.moe_layers or isinstance(params["layers"], tuple)):
        raise ValueError("router_logits needs MoE layers in the stacked (scanned) layout")
    x = embed(params, c, inputs) if jnp.issubdtype(inputs.dtype, jnp.integer) else inputs
    x = constrain(x.astype(params["norm"]["scale"].dtype), ACT_AXES)  # activations in the params' dtype
    b, t, _ = x.shape
    if cache is not None:
        start = cache.start
    elif start is None:
        start = jnp.zeros((b,), jnp.int32)
    slots, mask = _slots_and_mask(t, start, cache)
    if positions is None:
        positions = (slots[None, :] - start[:, None]).astype(jnp.float32)
    cos, sin = rope_tables(c, positions, x.dtype)
    stack_index = [(c.moe_layers if s else c.dense_layers).index(i) for i, s in enumerate(c.sparse_layers)]
    kept = tuple(i for i in hidden_layers if 0 < i < c.num_layers)  # states taken between layers

    def layer_step(carry, xs):
        x, kv, states = carry
        p, layer, sparse, ffn_index = xs
        attend = _attend_fn(kv, layer, mask, start, cache, t)
        h, kv = _attention(p["attn"], c, rms_norm(p["input_norm"], x, c.rms_norm_eps), cos, sin, attend)
        x = x + h
        normed = rms_norm(p["post_norm"], x, c.rms_norm_eps)
        router = _router_logits(params, c, normed, ffn_index) if router_logits else None
        x = x + _ffn(params, c, normed, sparse, ffn_index)
        states = tuple(jnp.where(layer == i - 1, x, s) for i, s in zip(kept, states, strict=True))
        if layer_inputs is not None:  # deepstack: added after layers 0..n-1
            n = layer_inputs.shape[0]
            x = x + jnp.where(layer < n, layer_inputs[jnp.minimum(layer, n - 1)].astype(x.dtype), 0)
        return (constrain(x, ACT_AXES), kv, states), router

    carry = (x, None if cache is None else (cache.k, cache.v), tuple(x for _ in kept))
    routers = None
    if isinstance(params["layers"], tuple):  # unstacked: one traced copy per layer, no weight slicing
        for layer, p in enumerate(params["layers"]):
            carry, _ = layer_step(carry, (p, layer, c.sparse_layers[layer], stack_index[layer]))
    else:
        xs = (
            params["layers"],
            jnp.arange(c.num_layers),
            jnp.asarray(c.sparse_layers),
            jnp.asarray(stack_index),
        )
        step = layer_step
        if c.remat is not None:
            policy = getattr(jax.checkpoint_policies, c.remat)
            step = jax.checkpoint(layer_step, policy=policy, prevent_cse=False)
        with jax.named_scope("layers"):
            carry, routers = jax.lax.scan(step, carry, xs)  # routers: layers b t experts | None
    out, kv, states = carry
    hidden = rms_norm(params["norm"], out, c.rms_norm_eps)
    states = {0: x, c.num_layers: hidden, **dict(zip(kept, states, strict=True))}
    out_logits = (
        None if logits == "none" else unembed(params, c, hidden if logits == "all" else hidden[:, -1])
    )
    if cache is not None:
        cache = dataclasses.replace(cache, k=kv[0], v=kv[1], index=cache.index + t)
    moe_routers = None if routers is None else routers[jnp.asarray(c.moe_layers)]
    return Output(out_logits, hidden, {i: states[i] for i in hidden_layers}, moe_routers), cache
