"""Feed-forward blocks of the Qwen decoders: the gated (SwiGLU) MLP and the mixture of experts built from it.

MoE (Qwen3-MoE / Qwen3-Omni): router softmax over all experts in float32 -> top-k -> renormalise when
`norm_topk_prob` -> cast to the activation dtype; each token's output is the weighted sum of its k experts,
plus an optional sigmoid-gated shared expert (the Talker). Both dispatch paths are exact and dropless:
`dense` runs every expert on every token and combines with the sparse routing weights; `ragged` sorts the
token-expert pairs by expert and runs grouped matmuls (`jax.lax.ragged_dot`; on CPU a loop over slabs of each
expert's rows, with its own VJP): k experts' work per token.
Expert kernels are fused: gate_up (E, D, 2I) with the gate in the first half, down (E, I, D). Packed
experts (`decoder.pack_linears`, CPU inference) run a kernel that reads only the experts some token picked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.nn import cpu_kernels
from omni_jax.nn.layers import activation, linear, linear_spec
from omni_jax.nn.packed import PackedKernel, unpack
from omni_jax.nn.params import ParamSpec

MOE_IMPLS = ("ragged", "dense")


def gated_mlp_spec(d: int, d_ff: int) -> dict:
    return {
        "gate": linear_spec(d, d_ff, bias=False),
        "up": linear_spec(d, d_ff, bias=False),
        "down": linear_spec(d_ff, d, bias=False, axes=("mlp", "embed")),
    }


def gated_mlp(p: dict, x: jax.Array, act: str = "silu") -> jax.Array:
    """down(act(gate(x)) * up(x)). x: ... d -> ... d."""
    return linear(p["down"], activation(act)(linear(p["gate"], x)) * linear(p["up"], x))


def moe_spec(d: int, n_experts: int, d_expert: int, d_shared: int = 0) -> dict:
    spec = {
        "router": {"kernel": ParamSpec((d, n_experts), ("embed", None))},
        "experts": {
            "gate_up": ParamSpec((n_experts, d, 2 * d_expert), ("expert", "embed", "mlp")),
            "down": ParamSpec((n_experts, d_expert, d), ("expert", "mlp", "embed")),
        },
    }
    if d_shared:
        spec["shared"] = gated_mlp_spec(d, d_shared)
        spec["shared_gate"] = {"kernel": ParamSpec((d, 1), ("embed", None))}
    return spec


def router_logits(kernel: jax.Array, x: jax.Array) -> jax.Array:
    """Raw (pre-softmax) router outputs in x's dtype. x: ... d -> ... experts."""
    return jnp.matmul(x, kernel.astype(x.dtype))


def route(kernel: jax.Array, x: jax.Array, top_k: int, norm_topk_prob: bool) -> tuple[jax.Array, jax.Array]:
    """x: n d -> (weights n k in x's dtype, expert ids n k), HF's order of casts."""
    logits = router_logits(kernel, x)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / weights.sum(-1, keepdims=True)
    return weights.astype(x.dtype), experts


def _swiglu_halves(h: jax.Array, act: str) -> jax.Array:
    gate, up = jnp.split(h, 2, axis=-1)
    return activation(act)(gate) * up


def experts_dense(p: dict, x: jax.Array, weights: jax.Array, experts: jax.Array, act: str) -> jax.Array:
    """Every expert on every token, combined by the routing weights (0 for unselected experts). n d -> n d."""
    n_experts = p["gate_up"].shape[0]
    combine = jnp.einsum("nk,nke->ne", weights, jax.nn.one_hot(experts, n_experts, dtype=weights.dtype))
    h = _swiglu_halves(jnp.einsum("nd,edf->nef", x, p["gate_up"].astype(x.dtype)), act)
    y = jnp.einsum("nef,efd->ned", h, p["down"].astype(x.dtype))
    return jnp.einsum("ne,ned->nd", combine, y)


def _slab_rows(rows: int, groups: int) -> int:
    """Rows per grouped-matmul step: a power of two near half a group's mean size, in [8, 128]."""
    half = max(1, rows // (2 * groups))
    return int(min(128, max(8, 1 << (half.bit_length() - 1))))


def _group_slabs(sizes: jax.Array, slab: int, body, init, per_group=lambda g: g):
    """fori over groups g, inner while over the slabs of `slab` rows that start group g's rows:
    body(per_group(g), row_start, carry) -> carry, per_group evaluated once per group (e.g. its weights).
    The last slab of a group runs past it (into later groups' rows)."""
    starts = jnp.cumsum(sizes) - sizes

    def group(g, carry):
        held = per_group(g)

        def step(c):
            j, carry = c
            return j + 1, body(held, starts[g] + j * slab, carry)

        n = (sizes[g] + slab - 1) // slab
        return jax.lax.while_loop(lambda c: c[0] < n, step, (jnp.int32(0), carry))[1]

    return jax.lax.fori_loop(0, sizes.shape[0], group, init)


def _grouped_matmul_rows(x: jax.Array, w: jax.Array, index, sizes: jax.Array, transpose: bool = False):
    """Groups in increasing order, so a slab running past its group is overwritten by the next group's.
    w: n g d f, read one group at a time at w[index, g] (transposed: its f d), never copied whole."""
    m, slab = x.shape[0], _slab_rows(x.shape[0], w.shape[1])
    xp = jnp.pad(x, ((0, slab), (0, 0)))

    def weights(g):
        w_g = w[index, g].astype(x.dtype)
        return w_g.T if transpose else w_g

    def body(w_g, r, out):
        y = jnp.matmul(jax.lax.dynamic_slice_in_dim(xp, r, slab), w_g)
        return jax.lax.dynamic_update_slice_in_dim(out, y.astype(out.dtype), r, 0)

    out = jnp.zeros((m + slab, w.shape[2] if transpose else w.shape[3]), x.dtype)
    return _group_slabs(sizes, slab, body, out, per_group=weights)[:m]


def _grouped_weight_grad(x: jax.Array, dy: jax.Array, sizes: jax.Array) -> jax.Array:
    """dw[g] = x[group g]^T dy[group g]. x: m d; dy: m f -> g d f."""
    slab = _slab_rows(x.shape[0], sizes.shape[0])
    xp, dyp = jnp.pad(x, ((0, slab), (0, 0))), jnp.pad(dy, ((0, slab), (0, 0)))
    ends = jnp.cumsum(sizes)

    def body(g, r, dw):
        rows = r + jnp.arange(slab)
        xs = jnp.where((rows < ends[g])[:, None], jax.lax.dynamic_slice_in_dim(xp, r, slab), 0)
        return dw.at[g].add(jnp.matmul(xs.T, jax.lax.dynamic_slice_in_dim(dyp, r, slab)))

    init = jnp.zeros((sizes.shape[0], x.shape[1], dy.shape[1]), jnp.float32)
    return _group_slabs(sizes, slab, body, init)


@jax.custom_vjp
def _grouped_matmul_cpu(x: jax.Array, w: jax.Array, index: jax.Array, sizes: jax.Array) -> jax.Array:
    return _grouped_matmul_rows(x, w, index, sizes)


def _grouped_matmul_fwd(x, w, index, sizes):
    return _grouped_matmul_rows(x, w, index, sizes), (x, w, index, sizes)


def _grouped_matmul_bwd(res, dy):
    x, w, index, sizes = res
    dx = _grouped_matmul_rows(dy, w, index, sizes, transpose=True)
    dw_entry = _grouped_weight_grad(x, dy, sizes).astype(w.dtype)
    dw = jax.lax.dynamic_update_index_in_dim(jnp.zeros_like(w), dw_entry, index, 0)
    return dx, dw, None, None


_grouped_matmul_cpu.defvjp(_grouped_matmul_fwd, _grouped_matmul_bwd)


def grouped_matmul(x: jax.Array, w: jax.Array, sizes: jax.Array, index: jax.Array | int | None = None):
    """`jax.lax.ragged_dot`: rows of x in contiguous groups of `sizes`, group g times w[g]. x: m d; w: g d f
    (or n g d f with `index` picking entry n: a layer of a stack, read per group, not sliced out whole)
    -> m f, in x's dtype. On CPU, where ragged_dot multiplies every row by every group's weights, a loop
    over slabs of each group's rows (work ~ m rows, not g * m)."""
    if index is None:
        w, index = w[None], 0
    index = jnp.asarray(index, jnp.int32)

    def ragged(x, w, index, sizes):
        return jax.lax.ragged_dot(x, w[index].astype(x.dtype), sizes)

    return jax.lax.platform_dependent(x, w, index, sizes, cpu=_grouped_matmul_cpu, default=ragged)


def experts_ragged(p: dict, x: jax.Array, weights: jax.Array, experts: jax.Array, act: str, layer=None):
    """Token-expert pairs sorted by expert, grouped matmuls over contiguous groups; with `layer`, p's
    kernels carry a leading layer axis and that layer is used. n d -> n d."""
    n, k = experts.shape
    n_experts = p["gate_up"].shape[-3]
    flat = experts.reshape(-1)  # (n k)
    order = jnp.argsort(flat, stable=True)
    sizes = jnp.bincount(flat, length=n_experts).astype(jnp.int32)
    xs = x[order // k]  # (n k) d, grouped by expert
    h = _swiglu_halves(grouped_matmul(xs, p["gate_up"], sizes, layer), act)
    ys = grouped_matmul(h, p["down"], sizes, layer)
    y = jnp.zeros_like(ys).at[order].set(ys).reshape(n, k, -1)  # back to token order
    return jnp.einsum("nk,nkd->nd", weights, y)


def experts_packed(p: dict, x: jax.Array, weights: jax.Array, experts: jax.Array, act: str) -> jax.Array:
    """Packed expert kernels: on CPU in float32 with SiLU the routed-experts kernel, else unpacked into the
    ragged path. n d -> n d."""
    gate_up, down = p["gate_up"], p["down"]

    def xla(x, weights, experts):
        return experts_ragged({"gate_up": unpack(gate_up), "down": unpack(down)}, x, weights, experts, act)

    def kernel(x, weights, experts):
        return cpu_kernels.routed_experts(x, gate_up.panels, down.panels, experts, weights)

    if x.dtype != jnp.float32 or act != "silu":
        return xla(x, weights, experts)
    return cpu_kernels.on_cpu(kernel, xla, x, weights, experts)


def moe(
    p: dict,
    x: jax.Array,
    *,
    top_k: int,
    norm_topk_prob: bool,
    act: str = "silu",
    impl: str = "ragged",
    layer: jax.Array | int | None = None,
) -> jax.Array:
    """Sparse MoE block (+ sigmoid-gated shared expert when `p` has one). x: ... d -> ... d. With `layer`,
    the expert kernels in p["experts"] carry a leading layer axis (a stacked decoder's) and the ragged path
    reads that layer's experts in place."""
    if impl not in MOE_IMPLS:
        raise ValueError(f"unknown MoE implementation {impl!r}; known: {MOE_IMPLS}")
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    weights, experts = route(p["router"]["kernel"], x, top_k, norm_topk_prob)
    packed = isinstance(p["experts"]["gate_up"], PackedKernel)
    if impl == "ragged" and not packed:
        y = experts_ragged(p["experts"], x, weights, experts, act, layer)
    else:
        kernels = p["experts"] if layer is None else jax.tree.map(lambda a: a[layer], p["experts"])
        y = (experts_packed if packed else experts_dense)(kernels, x, weights, experts, act)
    if "shared" in p:
        y = y + jax.nn.sigmoid(linear(p["shared_gate"], x)) * gated_mlp(p["shared"], x, act)
    return y.reshape(shape)
