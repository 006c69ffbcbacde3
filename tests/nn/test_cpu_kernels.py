"""CPU kernels: the packed-panel matmul, in-place cache attention and segment attention against float64 numpy,
their XLA fallbacks, and the packed CPU layout of whole decoders against transformers (greedy tokens,
logits)."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_fixtures import assert_talker_matches, prompts, talker, tiny

from omni_jax import parity
from omni_jax.inference.loop import generate
from omni_jax.models import decoder
from omni_jax.models import vision_encoder as ve
from omni_jax.nn import cpu_kernels, moe, packed
from omni_jax.nn.attention import attention, cache_attention, segment_attention
from omni_jax.nn.layers import linear
from omni_jax.nn.rope import apply_rope
from omni_jax.parity.reference import reference_generate

torch = pytest.importorskip("torch")


def test_kernels_build_where_a_compiler_exists():
    """CI has g++: the kernels must really run there, not silently fall back."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler on this machine: the XLA fallbacks run instead")
    assert cpu_kernels.ready()


@pytest.mark.parametrize("m", [1, 3, 8, 13, 300])  # row tails and a second row tile (256 rows)
@pytest.mark.parametrize("k,n", [(5, 1), (64, 31), (64, 32), (96, 33), (512, 100)])
def test_packed_matmul_matches_float64(m, k, n):
    rng = np.random.default_rng(m * 1000 + n)
    x, w = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    p = packed.pack(jnp.asarray(w))
    assert p.panels.shape == (-(-n // 32), k, 32)
    np.testing.assert_array_equal(np.asarray(packed.unpack(p)), w)
    want = x.astype(np.float64) @ w
    got = jax.jit(packed.packed_matmul)(jnp.asarray(x), p)
    np.testing.assert_allclose(np.asarray(got), want, atol=3e-5 * np.sqrt(k), rtol=0)
    # leading dims and a bias, through nn.linear
    bias = rng.standard_normal(n, np.float32)
    got = linear({"kernel": p, "bias": jnp.asarray(bias)}, jnp.asarray(x).reshape(1, m, k))
    np.testing.assert_allclose(np.asarray(got)[0], want + bias, atol=3e-5 * np.sqrt(k), rtol=0)


def test_fallbacks_without_the_kernels(monkeypatch):
    """No compiler (or OMNI_JAX_CPU_KERNELS=0): the same functions run as plain XLA, same numbers."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 40), np.float32), rng.standard_normal((40, 70), np.float32)
    q, kc, vc, start = attention_case(rng, d=16)

    def both():
        return packed.packed_matmul(jnp.asarray(x), packed.pack(w)), cache_attention(q, kc, vc, 1, start, 9)

    with_kernels = both()
    monkeypatch.setattr(cpu_kernels, "ready", lambda: False)
    for a, b in zip(with_kernels, both(), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # bfloat16 never takes the float32 kernel
    bf = packed.packed_matmul(jnp.asarray(x, jnp.bfloat16), packed.pack(w))
    assert bf.dtype == jnp.bfloat16 and bf.shape == (3, 70)


@pytest.mark.parametrize("n", [1, 8, 19])  # 19 tokens: more rows per expert than one register block
def test_routed_experts_match_float64(n, monkeypatch):
    rng = np.random.default_rng(n)
    e, d, f, k = 5, 40, 20, 3  # 2f = 40 and d = 40: padded panels on both kernels
    x = rng.standard_normal((n, d), np.float32)
    gate_up = rng.standard_normal((e, d, 2 * f), np.float32) / np.sqrt(d)
    down = rng.standard_normal((e, f, d), np.float32) / np.sqrt(f)
    experts = np.stack([rng.choice(e, k, replace=False) for _ in range(n)]).astype(np.int32)
    weights = rng.random((n, k)).astype(np.float32)
    want = np.zeros((n, d))
    for t in range(n):
        for j in range(k):
            h = x[t].astype(np.float64) @ gate_up[experts[t, j]]
            a = h[:f] / (1 + np.exp(-h[:f])) * h[f:]
            want[t] += weights[t, j] * (a @ down[experts[t, j]])
    p = {"gate_up": packed.pack(jnp.asarray(gate_up)), "down": packed.pack(jnp.asarray(down))}
    args = jnp.asarray(x), jnp.asarray(weights), jnp.asarray(experts)
    np.testing.assert_allclose(np.asarray(moe.experts_packed(p, *args, "silu")), want, atol=1e-5)
    monkeypatch.setattr(cpu_kernels, "ready", lambda: False)  # the XLA fallback: unpacked, ragged
    np.testing.assert_allclose(np.asarray(moe.experts_packed(p, *args, "silu")), want, atol=1e-5)


def attention_case(rng, d, layers=3, b=3, s=10, kh=2, h=6):
    q = jnp.asarray(rng.standard_normal((b, 1, h, d), np.float32))
    kc, vc = (jnp.asarray(rng.standard_normal((layers, b, s, kh, d), np.float32)) for _ in range(2))
    return q, kc, vc, jnp.asarray([0, 4, 8], jnp.int32)[:b]


def reference_attention(q, kc, vc, layer, start, stop):
    """float64 softmax attention of one token per row over slots start[b] .. stop-1 (GQA)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q[:, 0], kc[layer], vc[layer]))
    b, h, d = q.shape
    group = h // k.shape[2]
    out = np.zeros_like(q)
    for row in range(b):
        for head in range(h):
            keys, values = (a[row, start[row] : stop, head // group] for a in (k, v))
            logits = keys @ q[row, head] / np.sqrt(d)
            p = np.exp(logits - logits.max())
            out[row, head] = p @ values / p.sum()
    return out[:, None]


@pytest.mark.parametrize("d", [16, 20, 64])  # 20: a head size that is not a multiple of the vector width
@pytest.mark.parametrize("stop", [9, 10])
def test_cache_attention_matches_float64(d, stop):
    rng = np.random.default_rng(d + stop)
    q, kc, vc, start = attention_case(rng, d)
    for layer in (0, 2):
        got = jax.jit(cache_attention)(q, kc, vc, layer, start, stop)
        want = reference_attention(q, kc, vc, layer, np.asarray(start), stop)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def reference_segment_attention(q, k, v, segments, key_block_start, key_blocks, block, query_blocks):
    """float64: query chunk c's rows attend to the keys of their segment among [at, at + span), at the chunk's
    first key clipped into [0, t - span]; a row with none of them weighs the span alike."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    t, h, d = q.shape
    span, rows = key_blocks * block, query_blocks * block
    out = np.zeros_like(q)
    for i in range(t):
        at = min(max(int(key_block_start[i // rows]) * block, 0), t - span)
        keys = np.arange(at, at + span)
        own = keys[segments[keys] == segments[i]]
        keys = own if len(own) else keys
        for head in range(h):
            logits = k[keys, head] @ q[i, head] / np.sqrt(d) if len(own) else np.zeros(len(keys))
            p = np.exp(logits - logits.max())
            out[i, head] = p @ v[keys, head] / p.sum()
    return out


def vision_layout(grid):
    config = ve.VisionConfig(depth=1, hidden_size=64, num_heads=1, intermediate_size=8, out_hidden_size=8,
                             deepstack_indexes=())  # fmt: skip
    tables, layout = ve.grid_tables(config, np.asarray(grid))
    sizes = layout.key_blocks, layout.block, layout.query_blocks
    return layout.patches, tables.segments, tables.key_block_start, *sizes


SEGMENT_CASES = {
    "one image": vision_layout([[1, 28, 28]]),
    "images of three sizes": vision_layout([[1, 10, 34], [1, 36, 6], [3, 12, 12]]),
    "a video": vision_layout([[4, 14, 14]]),
    "small, one dense block": vision_layout([[1, 4, 6], [2, 2, 8]]),
    # block 5, spans that start inside a key group, padding rows (-1) whose span holds no -1 key
    "odd blocks, rows with no key": (40, np.r_[np.repeat(np.arange(7), 5), [-1] * 5], [0, 2, 4, 7], 3, 5, 2),
}


def rotated(x, cos, sin):
    """float64 rotate-half rotary of x t h d by cos, sin t d."""
    half = x.shape[-1] // 2
    turned = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, None] + turned * sin[:, None]


@pytest.mark.parametrize("case", SEGMENT_CASES)
@pytest.mark.parametrize("h,d", [(4, 64), (3, 72), (2, 8)])  # 72: the release head size, not 16k
@pytest.mark.parametrize("rope", [False, True])
def test_segment_attention_matches_float64(case, h, d, rope, monkeypatch):
    t, segments, starts, key_blocks, block, query_blocks = SEGMENT_CASES[case]
    segments, starts = np.asarray(segments, np.int32), np.asarray(starts, np.int32)
    rng = np.random.default_rng(t + h * d)
    q, k, v = (rng.standard_normal((t, h, d)).astype(np.float32) for _ in range(3))
    angles = rng.uniform(0, 30, (t, d // 2))
    tables = tuple(np.concatenate([f(angles)] * 2, -1).astype(np.float32) for f in (np.cos, np.sin))
    qr, kr = (rotated(np.float64(x), *np.float64(tables)) for x in (q, k)) if rope else (q, k)
    want = reference_segment_attention(qr, kr, v, segments, starts, key_blocks, block, query_blocks)
    layout = dict(segments=segments, key_block_start=starts, key_blocks=key_blocks, block=block,
                  query_blocks=query_blocks, rope=tables if rope else None)  # fmt: skip
    qkv = np.stack([q, k, v], 1)  # t 3 h d
    run = jax.jit(lambda qkv: segment_attention(qkv, **layout))
    np.testing.assert_allclose(np.asarray(run(qkv)), want, atol=2e-6)
    monkeypatch.setattr(cpu_kernels, "ready", lambda: False)  # the XLA path
    got = segment_attention(qkv, **layout)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


def test_segment_attention_gradient_and_bfloat16():
    """The kernel's gradient (the XLA path's) equals dense masked attention's, with and without the rotary;
    bfloat16 runs the XLA path."""
    t, segments, starts, key_blocks, block, query_blocks = vision_layout([[1, 4, 6], [2, 8, 8]])
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((t, 2, 16)), jnp.float32) for _ in range(3))
    layout = dict(segments=segments, key_block_start=starts, key_blocks=key_blocks, block=block,
                  query_blocks=query_blocks)  # fmt: skip
    weights = jnp.asarray(rng.standard_normal((t, 2, 16)), jnp.float32)
    mask = (segments[:, None] == segments[None, :])[None, None]

    def loss(fn):
        return jax.grad(lambda q, k, v: (fn(q, k, v) * weights).sum(), argnums=(0, 1, 2))(q, k, v)

    ours = loss(lambda *qkv: segment_attention(jnp.stack(qkv, 1), **layout))
    dense = loss(lambda q, k, v: attention(q[None], k[None], v[None], mask=mask)[0])
    for a, b in zip(ours, dense, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    cos, sin = (jnp.asarray(rng.standard_normal((t, 16)), jnp.float32) for _ in range(2))
    ours = loss(lambda *qkv: segment_attention(jnp.stack(qkv, 1), **layout, rope=(cos, sin)))
    dense = loss(lambda q, k, v: attention(*(apply_rope(x[None], cos[None], sin[None]) for x in (q, k)),
                                           v[None], mask=mask)[0])  # fmt: skip
    for a, b in zip(ours, dense, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    qkv = jnp.stack([q, k, v], 1)  # t 3 h d
    with pytest.raises(ValueError, match=r"rope cos and sin must be \(t, d\)"):
        segment_attention(qkv, **layout, rope=(cos[:, :8], sin[:, :8]))
    with pytest.raises(ValueError, match=r"qkv must be \(t, 3, h, d\)"):
        segment_attention(q, **layout)
    bf = segment_attention(qkv.astype(jnp.bfloat16), **layout)
    assert bf.dtype == jnp.bfloat16
    want = segment_attention(qkv, **layout)
    np.testing.assert_allclose(np.asarray(bf, np.float32), np.asarray(want), atol=0.1)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "qwen3_moe"])  # q/k/v bias; tied + q/k norm; MoE
def test_cpu_layout_greedy_tokens_match_transformers(kind):
    model = tiny(kind)
    config, params = parity.from_torch(model)
    ids, mask = prompts()
    reference = reference_generate(model, {"input_ids": ids, "attention_mask": mask}, 16, (), 0)
    for layout in (decoder.cpu_layout(params, config), decoder.pack_linears(params, config)):
        ours = generate(layout, config, ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=16)
        np.testing.assert_array_equal(np.asarray(ours), reference)
    with torch.no_grad():
        logits = model(input_ids=ids[:1]).logits.numpy()  # row 0 has no padding
    out, _ = decoder.forward(decoder.cpu_layout(params, config), config, jnp.asarray(ids[:1].numpy()))
    np.testing.assert_allclose(np.asarray(out.logits), logits, atol=1e-3)


def test_cpu_layout_of_the_talker_matches_transformers():
    """The Talker's MoE: shared and routed experts packed; router and the 1-wide shared gate untouched."""
    model, config, params = talker()
    layout = decoder.cpu_layout(params, config)
    moe = layout["moe"][0]
    assert isinstance(moe["shared"]["down"]["kernel"], packed.PackedKernel)
    assert layout["layers"][0]["attn"]["q"]["kernel"].d_out == 4 * 32
    assert not isinstance(moe["router"]["kernel"], packed.PackedKernel)
    assert not isinstance(moe["shared_gate"]["kernel"], packed.PackedKernel)
    assert moe["experts"]["gate_up"].panels.shape == (8, 2 * 32 // 32, 64, 32)  # E, 2f / 32, d, 32
    assert_talker_matches(model, config, layout)
