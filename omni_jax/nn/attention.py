"""Dot-product attention: masked (with GQA), windowed (block-diagonal, packed into windows), and blocked
(exact, in query/key blocks, for long sequences)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from omni_jax.nn import cpu_kernels
from omni_jax.nn.rope import apply_rope

# A finite mask value keeps fully masked rows (left padding) free of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# cache lengths from which a decoder prefill attends with `causal_blocked_attention` (memory linear in t)
BLOCKED_FROM = 768


def _group_major(q: jax.Array, kh: int) -> jax.Array:
    """b t h d -> b kh (g t) d: each key/value head's query group as one row block, so the logits of a GQA
    group are one plain batched matmul written in softmax order (no transposed logits pass)."""
    b, t, h, d = q.shape
    return jnp.einsum("btkgd->bkgtd", q.reshape(b, t, kh, h // kh, d)).reshape(b, kh, h // kh * t, d)


def _from_group_major(out: jax.Array, g: int) -> jax.Array:
    """b kh (g t) d -> b t (kh g) d."""
    b, kh, gt, d = out.shape
    return jnp.einsum("bkgtd->btkgd", out.reshape(b, kh, g, gt // g, d)).reshape(b, gt // g, kh * g, d)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None, scale: float | None = None
) -> jax.Array:
    """Softmax attention. q: b t h d; k, v: b s kh d with h % kh == 0 (GQA); mask: bool, broadcastable to
    b h t s, True where a query may attend. Softmax in float32, as HF's eager path. -> b t h d."""
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    if h % kh:
        raise ValueError(f"query heads {h} not a multiple of key/value heads {kh}")
    g = h // kh
    scale = d**-0.5 if scale is None else scale
    kt, vt = (jnp.einsum("bskd->bksd", x) for x in (k, v))
    logits = jnp.einsum("bkqd,bksd->bkqs", _group_major(q, kh), kt).astype(jnp.float32) * scale
    if mask is not None:
        mask = jnp.broadcast_to(mask, (b, h, t, s)).reshape(b, kh, g * t, s)
        logits = jnp.where(mask, logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return _from_group_major(jnp.einsum("bkqs,bksd->bkqd", probs, vt), g)


def cache_attention(q, k_cache, v_cache, layer, start, stop, scale: float | None = None) -> jax.Array:
    """One new token per row against layer `layer` of stacked caches (L b s kh d), slots start[b] .. stop-1.
    q: b 1 h d -> b 1 h d. On CPU in float32 a kernel reads the layer in place (no slice or transpose)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    layer, start, stop = (jnp.asarray(a, jnp.int32) for a in (layer, start, stop))

    def xla(q, k_cache, v_cache, layer, start, stop):
        slots = jnp.arange(k_cache.shape[2])
        mask = (slots >= start[:, None]) & (slots < stop)  # b s
        k, v = (c[layer].astype(q.dtype) for c in (k_cache, v_cache))
        return attention(q, k, v, mask=mask[:, None, None], scale=scale)

    def kernel(q, k_cache, v_cache, layer, start, stop):
        return cpu_kernels.decode_attention(q[:, 0], k_cache, v_cache, layer, start, stop, scale)[:, None]

    if not q.dtype == k_cache.dtype == v_cache.dtype == jnp.float32:
        return xla(q, k_cache, v_cache, layer, start, stop)
    return cpu_kernels.on_cpu(kernel, xla, q, k_cache, v_cache, layer, start, stop)


def windowed_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, window: int, key_mask: jax.Array, scale: float | None = None
) -> jax.Array:
    """Block-diagonal attention: token i attends to token j iff both lie in the same window of `window`
    consecutive positions and key j is valid. q, k, v: b t h d with t % window == 0; key_mask: bool b t.
    Costs O(t * window), not O(t^2). -> b t h d."""
    b, t, h, d = q.shape
    if t % window:
        raise ValueError(f"sequence length {t} is not a multiple of the window {window}")
    n = t // window

    def to_windows(x):  # b t h d -> (b n) w h d
        return x.reshape(b * n, window, *x.shape[2:])

    mask = key_mask.reshape(b * n, 1, 1, window)
    out = attention(to_windows(q), to_windows(k), to_windows(v), mask=mask, scale=scale)
    return out.reshape(b, t, h, -1)


def blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    scale: float | None = None,
    block: int = 256,
) -> jax.Array:
    """Exact softmax attention over all keys, computed one batch row and one block of queries at a time
    (lax.map), so the float32 logits in flight stay small; normalised after the value product.
    q, k, v: b t h d (equal heads); key_mask: bool b s, True where a key may be attended (None: all).
    -> b t h d."""
    b, t, h, d = q.shape
    scale = d**-0.5 if scale is None else scale
    n = -(-t // block)
    size = -(-t // n)  # n balanced blocks
    qb = (
        jnp.pad(q, ((0, 0), (0, n * size - t), (0, 0), (0, 0)))
        .reshape(b, n, size, h, d)
        .transpose(0, 1, 3, 2, 4)
    )
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # b h s d

    def row(args):  # one batch row: q n h blk d, k/v h s d[, mask s]
        qr, kr, vr, *mr = args

        def one(qq):  # h blk d -> h blk d
            logits = jnp.einsum("htd,hsd->hts", qq, kr).astype(jnp.float32) * scale
            if mr:  # no select pass over the logits without a mask
                logits = jnp.where(mr[0], logits, MASK_VALUE)
            e = jnp.exp(logits - logits.max(-1, keepdims=True))
            out = jnp.einsum("hts,hsd->htd", e.astype(vr.dtype), vr)
            return out / e.sum(-1, keepdims=True).astype(out.dtype)

        return jax.lax.map(one, qr)

    rows = (qb, kh, vh) if key_mask is None else (qb, kh, vh, key_mask)
    out = jax.lax.map(row, rows)  # b n h blk d
    return out.transpose(0, 1, 3, 2, 4).reshape(b, n * size, h, -1)[:, :t]


def causal_blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    start: jax.Array,
    offset: jax.Array | int = 0,
    scale: float | None = None,
    block: int = 256,
) -> jax.Array:
    """Causal softmax attention with left padding, flash-style: queries and keys in blocks, an online
    softmax (running max and sum) over the key blocks, so memory is linear in the length (the float32 logits
    in flight are b h block block); key blocks after a query block's last slot are skipped (lax.cond).
    Query i sits at slot offset + i and attends to keys start[b] .. itself. q: b t h d; k, v: b s kh d (GQA,
    h % kh == 0); start: b int. Equals `attention` with that mask (rows with no key to attend, i.e. left
    padding, aside). -> b t h d."""
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    g, dv = h // kh, v.shape[-1]
    scale = d**-0.5 if scale is None else scale
    nq, nk = -(-t // block), -(-s // block)
    qp = jnp.pad(q * jnp.asarray(scale, q.dtype), ((0, 0), (0, nq * block - t), (0, 0), (0, 0)))
    qb = jnp.einsum("bkgnx->nbkgx", _group_major(qp, kh).reshape(b, kh, g, nq, block * d))
    qb = qb.reshape(nq, b, kh, g * block, d)  # per query block: b kh (g q) d
    kb, vb = (
        jnp.einsum(
            "bnskd->nbksd",
            jnp.pad(x, ((0, 0), (0, nk * block - s), (0, 0), (0, 0))).reshape(b, nk, block, kh, -1),
        )
        for x in (k, v)
    )  # nk b kh block d
    start = jnp.asarray(start, jnp.int32)

    def query_block(i):  # -> b kh g block dv
        qi = qb[i]
        q_slots = offset + i * block + jnp.arange(block)

        def key_block(carry, j):  # key blocks wholly after the query block's last slot are skipped
            needed = j * block <= offset + i * block + block - 1
            return jax.lax.cond(needed, lambda c: attend_key_block(c, j), lambda c: c, carry), None

        def attend_key_block(carry, j):
            top, total, acc = carry  # b kh g block (x2), b kh g block dv
            k_slots = j * block + jnp.arange(block)
            allowed = (k_slots[None, None] >= start[:, None, None]) & (k_slots[None] <= q_slots[:, None])
            allowed &= k_slots < s  # b block(q) block(k)
            logits = jnp.einsum("bkqd,bksd->bkqs", qi, kb[j]).astype(jnp.float32).reshape(*top.shape, block)
            logits = jnp.where(allowed[:, None, None], logits, MASK_VALUE)
            new_top = jnp.maximum(top, logits.max(-1))
            e = jnp.exp(logits - new_top[..., None])
            fix = jnp.exp(top - new_top)
            part = jnp.einsum("bkqs,bksd->bkqd", e.astype(v.dtype).reshape(b, kh, g * block, block), vb[j])
            return new_top, total * fix + e.sum(-1), acc * fix[..., None] + part.reshape(acc.shape)

        shape = (b, kh, g, block)
        init = (jnp.full(shape, -jnp.inf), jnp.zeros(shape), jnp.zeros((*shape, dv)))
        (_, total, acc), _ = jax.lax.scan(key_block, init, jnp.arange(nk))
        return (acc / total[..., None]).astype(v.dtype)

    out = jax.lax.map(query_block, jnp.arange(nq))  # nq b kh g block dv
    return jnp.einsum("nbkgqd->bnqkgd", out).reshape(b, nq * block, h, dv)[:, :t]


def segment_attention(
    qkv: jax.Array,
    *,
    segments: jax.Array,
    key_block_start: jax.Array,
    key_blocks: int,
    block: int,
    query_blocks: int = 1,
    scale: float | None = None,
    rope: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Attention inside segments (token i sees token j iff segments[i] == segments[j]) as a block structure:
    query chunk c (`query_blocks` blocks) reads only the `key_blocks` key blocks from `key_block_start[c]` on,
    which must cover its segments. qkv: t 3 h d (q, k, v packed, as a fused projection gives them) with
    t % block == 0; segments: t int; key_block_start: ceil(t / (block * query_blocks)) int; rope: (cos, sin)
    t d, applied to q and k (`apply_rope`) first. Costs O(t * key_blocks * block), not O(t^2). On CPU in
    float32 a kernel reads qkv in place, applies the rotary as it reads q and k and keeps each query tile's
    logits in cache (its gradient is the XLA path's). -> t h d."""
    if qkv.ndim != 4 or qkv.shape[1] != 3:
        raise ValueError(f"qkv must be (t, 3, h, d), got shape {qkv.shape}")
    t, _, h, d = qkv.shape
    if t % block:
        raise ValueError(f"sequence length {t} is not a multiple of the block {block}")
    if not 0 < key_blocks * block <= t:
        raise ValueError(f"key span {key_blocks} x {block} must be within the sequence length {t}")
    if rope is not None and (d % 2 or any(a.shape != (t, d) for a in rope)):
        shapes = [a.shape for a in rope]
        raise ValueError(f"rope cos and sin must be (t, d) = {(t, d)} with d even, got {shapes}")
    scale = d**-0.5 if scale is None else scale
    layout = (key_blocks, block, query_blocks, float(scale))
    return _segment_attention(qkv, jnp.asarray(segments), jnp.asarray(key_block_start), rope, layout)


def _segment_attention_xla(qkv, segments, key_block_start, rope, layout) -> jax.Array:
    """segment_attention in XLA ops: a `lax.map` over query chunks; the softmax normalised after the value
    product."""
    key_blocks, block, query_blocks, scale = layout
    t, _, h, d = qkv.shape
    span, rows = key_blocks * block, query_blocks * block
    chunks = -(-t // rows)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    if rope is not None:
        cos, sin = (a.astype(jnp.float32)[None] for a in rope)
        q, k = (apply_rope(a[None].astype(jnp.float32), cos, sin)[0].astype(a.dtype) for a in (q, k))
    kh, vh = k.transpose(1, 0, 2), v.transpose(1, 0, 2)  # h t d, sliced along t per query chunk

    def one(args):  # one query chunk: h rows d, its segment ids, its first key block
        qq, sq, first = args
        at = first * block
        kk, vv = (jax.lax.dynamic_slice_in_dim(x, at, span, axis=1) for x in (kh, vh))  # h span d
        sk = jax.lax.dynamic_slice_in_dim(segments, at, span)
        logits = jnp.einsum("hqd,hkd->hqk", qq, kk).astype(jnp.float32)
        logits = jnp.where(sq[:, None] == sk[None, :], logits, MASK_VALUE)
        e = jnp.exp(logits - logits.max(-1, keepdims=True))
        out = jnp.einsum("hqk,hkd->hqd", e.astype(vv.dtype), vv).astype(jnp.float32)
        return (out / e.sum(-1)[..., None]).astype(vv.dtype)

    q = jnp.pad((q.astype(jnp.float32) * scale).astype(q.dtype), ((0, chunks * rows - t), (0, 0), (0, 0)))
    sq = jnp.pad(segments, (0, chunks * rows - t), constant_values=-1).reshape(chunks, rows)
    q = q.reshape(chunks, rows, h, d).transpose(0, 2, 1, 3)  # c h rows d
    out = jax.lax.map(one, (q, sq, key_block_start))  # c h rows d
    return out.transpose(0, 2, 1, 3).reshape(chunks * rows, h, d)[:t]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _segment_attention(qkv, segments, key_block_start, rope, layout) -> jax.Array:
    """The kernel on CPU in float32, else the XLA path."""
    key_blocks, block, query_blocks, scale = layout
    xla = functools.partial(_segment_attention_xla, layout=layout)
    if not all(a.dtype == jnp.float32 for a in (qkv, *(rope or ()))):
        return xla(qkv, segments, key_block_start, rope)

    def kernel(qkv, segments, key_block_start, rope):
        cos, sin = (jnp.zeros((0, qkv.shape[-1]), jnp.float32),) * 2 if rope is None else rope  # empty: none
        return cpu_kernels.segment_attention(
            qkv, segments, key_block_start, cos, sin,
            block=block, span=key_blocks * block, rows=query_blocks * block, scale=scale,
        )  # fmt: skip

    return cpu_kernels.on_cpu(kernel, xla, qkv, segments, key_block_start, rope)


def _segment_attention_fwd(qkv, segments, key_block_start, rope, layout):
    residuals = qkv, segments, key_block_start, rope
    return _segment_attention(*residuals, layout), residuals


def _segment_attention_bwd(layout, residuals, grad):
    qkv, segments, key_block_start, rope = residuals

    def xla(qkv, rope):
        return _segment_attention_xla(qkv, segments, key_block_start, rope, layout)

    _, vjp = jax.vjp(xla, qkv, rope)
    dqkv, drope = vjp(grad)
    return dqkv, None, None, drope


_segment_attention.defvjp(_segment_attention_fwd, _segment_attention_bwd)
