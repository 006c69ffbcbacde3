"""Qwen3-Omni vision encoder (Qwen3OmniMoeVisionEncoder): patches of images and video frames -> merged tokens
for the Thinker, plus the deepstack features added after its first layers.

    config = VisionConfig.from_hf(hf_config)         # a Qwen3OmniMoeConfig, thinker or vision config
    out = encode(params, config, pixel_values, grid_thw)   # processor outputs (patches N x C*T*p*p, t h w)
    out.embeds[: out.tokens]                          # N/4 out_hidden_size; out.deepstack: n_ds N/4 d

Everything that depends only on `grid_thw` (patch coordinates for the 2-D rotary, the gather indices and
weights that resample the learned position table bilinearly, the attention segments: one per image or
video frame group) is computed on the host in numpy. Each segment starts on an attention block boundary and
the rows are padded to a bucket, so a query chunk reads only its own segments' key blocks
(omni_jax.nn.attention.segment_attention) and grids of one layout share one compilation; the merged tokens
are compacted afterwards. The Conv3d patch embedding is one matmul (kernel = stride = the patch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert.keymap import LINEAR, Rule, Transform, linear_rules
from omni_jax.models.audio_common import hf_get, norm_rules, sub_config
from omni_jax.nn.attention import segment_attention
from omni_jax.nn.layers import activation, layer_norm, layer_norm_spec, linear, linear_spec
from omni_jax.nn.params import ParamSpec, stacked
from omni_jax.nn.rope import rope_cos_sin, rope_inv_freq

LN_EPS = 1e-6
DENSE_UP_TO = 128  # calls up to this many patches attend in one masked block
ALIGNED_BLOCKS = (64, 32, 16)  # block sizes the segments of larger calls may be aligned to
CHUNK_OVERHEAD_ROWS = 128  # a query chunk's fixed cost, in query rows (small matmuls run slower on CPU)
MAX_CHUNK_LOGITS = 1 << 24  # float32 logits one query chunk may hold (heads x rows x key span)
MIN_BUCKET = 16

# torch Conv3d weight (O, C, T, kh, kw) <-> (C, T, kh, kw, O): flattened over its first four axes it is the
# (C*T*p*p, O) kernel of the patch matmul, in pixel_values' feature order.
CONV3D_AS_LINEAR = Transform(
    "conv3d OCTHW->CTHWO", lambda a: a.transpose(1, 2, 3, 4, 0), lambda a: a.transpose(4, 0, 1, 2, 3)
)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    out_hidden_size: int
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    num_position_embeddings: int = 2304
    deepstack_indexes: tuple[int, ...] = (8, 16, 24)
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0

    def __post_init__(self):
        problems = []
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            problems.append(f"hidden_size {self.hidden_size} / num_heads {self.num_heads} must be 4k")
        if self.side**2 != self.num_position_embeddings:
            problems.append(f"num_position_embeddings {self.num_position_embeddings} is not a square")
        if bad := [i for i in self.deepstack_indexes if not 0 <= i < self.depth]:
            problems.append(
                f"deepstack_visual_indexes {bad} are not blocks of the {self.depth}-block encoder"
            )
        if list(self.deepstack_indexes) != sorted(set(self.deepstack_indexes)):
            problems.append(f"deepstack_visual_indexes {self.deepstack_indexes} must be increasing")
        if problems:
            raise ValueError("invalid vision config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def side(self) -> int:
        """Side of the square learned position table."""
        return int(self.num_position_embeddings**0.5)

    @property
    def patch_dim(self) -> int:
        """Features of one patch row of pixel_values: C * T * p * p."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @classmethod
    def from_hf(cls, cfg: Any) -> VisionConfig:
        """From a Qwen3OmniMoeConfig, its thinker_config or the vision_config itself (object or dict)."""
        c = sub_config(sub_config(cfg, "thinker_config"), "vision_config")
        rope = hf_get(c, "rope_parameters", default={}) or {}
        if rope.get("rope_type", "axial") != "axial":
            raise ValueError(f"the vision encoder's rotary is axial, got rope_parameters {rope}")
        return cls(
            depth=hf_get(c, "depth", "num_hidden_layers"),
            hidden_size=hf_get(c, "hidden_size"),
            num_heads=hf_get(c, "num_heads", "num_attention_heads"),
            intermediate_size=hf_get(c, "intermediate_size"),
            out_hidden_size=hf_get(c, "out_hidden_size"),
            patch_size=hf_get(c, "patch_size", default=16),
            temporal_patch_size=hf_get(c, "temporal_patch_size", default=2),
            spatial_merge_size=hf_get(c, "spatial_merge_size", default=2),
            in_channels=hf_get(c, "in_channels", default=3),
            num_position_embeddings=hf_get(c, "num_position_embeddings", default=2304),
            deepstack_indexes=tuple(hf_get(c, "deepstack_visual_indexes", default=(8, 16, 24))),
            hidden_act=hf_get(c, "hidden_act", default="gelu_pytorch_tanh"),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
        )


# ---------------------------------------------------------------- parameters


def _merger_specs(config: VisionConfig, *, postshuffle: bool) -> dict:
    d, wide = config.hidden_size, config.hidden_size * config.merge_unit
    return {
        "ln_q": layer_norm_spec(wide if postshuffle else d, None),
        "mlp0": linear_spec(wide, wide, axes=(None, "mlp")),
        "mlp2": linear_spec(wide, config.out_hidden_size, axes=("mlp", "embed")),
    }


def param_specs(config: VisionConfig) -> dict:
    c, d = config, config.hidden_size
    block = {
        "norm1": layer_norm_spec(d),
        "attn": {
            "qkv": linear_spec(d, 3 * d, axes=("embed", "heads")),
            "proj": linear_spec(d, d, axes=("heads", "embed")),
        },
        "norm2": layer_norm_spec(d),
        "fc1": linear_spec(d, c.intermediate_size, axes=("embed", "mlp")),
        "fc2": linear_spec(c.intermediate_size, d, axes=("mlp", "embed")),
    }  # fmt: skip
    patch = (c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size)
    specs = {
        "patch_embed": {
            "kernel": ParamSpec((*patch, d), (None, None, None, None, "embed")),
            "bias": ParamSpec((d,), ("embed",), init="zeros"),
        },
        "pos_embed": {"embedding": ParamSpec((c.num_position_embeddings, d), (None, "embed"))},
        "blocks": stacked(block, c.depth),
        "merger": _merger_specs(c, postshuffle=False),
    }
    if c.deepstack_indexes:
        specs["deepstack"] = stacked(_merger_specs(c, postshuffle=True), len(c.deepstack_indexes))
    return specs


def _merger_rules(hf: str, ours: str) -> list[Rule]:
    return norm_rules(f"{hf}.ln_q", f"{ours}/ln_q") + [
        r for i in (0, 2) for r in linear_rules(f"{hf}.mlp.{i}", f"{ours}/mlp{i}")
    ]


def hf_rules(config: VisionConfig, prefix: str = "") -> list[Rule]:
    """Keys relative to the encoder module (`thinker.visual.` in the release checkpoint)."""
    p, blk = prefix, f"{prefix}blocks.{{layer}}."
    rules = [
        Rule(f"{p}patch_embed.proj.weight", "patch_embed/kernel", CONV3D_AS_LINEAR),
        Rule(f"{p}patch_embed.proj.bias", "patch_embed/bias"),
        Rule(f"{p}pos_embed.weight", "pos_embed/embedding"),
    ]
    for hf, ours in (("norm1", "norm1"), ("norm2", "norm2")):
        rules += norm_rules(f"{blk}{hf}", f"blocks/{ours}")
    for hf, ours in (("attn.qkv", "attn/qkv"), ("attn.proj", "attn/proj"), ("mlp.linear_fc1", "fc1"),
                     ("mlp.linear_fc2", "fc2")):  # fmt: skip
        rules += [
            Rule(f"{blk}{hf}.weight", f"blocks/{ours}/kernel", LINEAR),
            Rule(f"{blk}{hf}.bias", f"blocks/{ours}/bias"),
        ]
    rules += _merger_rules(f"{p}merger", "merger")
    if config.deepstack_indexes:
        rules += _merger_rules(f"{p}merger_list.{{layer}}", "deepstack")
    return rules


# ---------------------------------------------------------------- host-side grid precompute


class Grid(NamedTuple):
    """Per-row tables of a padded call, from grid_thw alone (numpy, or device arrays inside jit)."""

    positions: Any  # n 2 int32: (row, col) of the patch in its image, for the rotary
    pos_index: Any  # n 4 int32: position-table rows of the bilinear taps (r0c0, r0c1, r1c0, r1c1)
    pos_weight: Any  # n 4 float32: their weights
    segments: Any  # n int32: attention segment (one per image / video frame group; padding: -1)
    key_block_start: Any  # chunks int32: the first key block each query chunk reads
    token_rows: Any  # n/merge_unit int32: the merged row of each merged token (valid ones first)


class Layout(NamedTuple):
    """The static shape of a call: what one compilation covers."""

    patches: int  # padded row count
    block: int  # segments start on multiples of it
    key_blocks: int  # key blocks each query chunk reads
    query_blocks: int = 1  # blocks per query chunk (one step of the attention)

    @property
    def chunks(self) -> int:
        """Query chunks the attention steps through (the last may run past the rows)."""
        return -(-self.patches // (self.block * self.query_blocks))


def bucket_patches(n: int) -> int:
    """Padded row count of a small call (one attention block): a power of two, at least MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << (n - 1).bit_length())


def bucket_blocks(n: int) -> int:
    """Block counts: exact up to 32, then 1/32-octave steps (<= 3.1 % padding)."""
    step = 1 << max(0, n.bit_length() - 6)
    return -(-n // step) * step


def check_grid(config: VisionConfig, grid_thw: Any, rows: int | None = None) -> np.ndarray:
    """grid_thw as int64 (items, 3), checked: positive, h and w multiples of the merge size, and (given the
    pixel rows) sum of t*h*w equal to them."""
    grid = np.asarray(grid_thw)
    if (
        grid.ndim != 2
        or grid.shape[1:] != (3,)
        or len(grid) == 0
        or not np.issubdtype(grid.dtype, np.integer)
    ):
        raise ValueError(f"grid_thw must be integers (items >= 1, 3), got {grid.dtype} {grid.shape}")
    if (grid < 1).any():
        raise ValueError(f"grid_thw rows must be positive (t, h, w), got {grid.tolist()}")
    m = config.spatial_merge_size
    if bad := [g for g in grid.tolist() if g[1] % m or g[2] % m]:
        raise ValueError(f"grid_thw rows {bad}: h and w must be multiples of spatial_merge_size {m}")
    if rows is not None and int(grid.prod(1).sum()) != rows:
        raise ValueError(
            f"grid_thw {grid.tolist()} gives {int(grid.prod(1).sum())} patches, pixels have {rows}"
        )
    return grid.astype(np.int64)


def _patch_coords(h: int, w: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of a frame's patches in token order: block row, block col, in-block row, col."""
    br, bc, ir, ic = np.meshgrid(
        np.arange(h // m), np.arange(w // m), np.arange(m), np.arange(m), indexing="ij"
    )
    return (br * m + ir).ravel(), (bc * m + ic).ravel()


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps (align_corners, border) of `index` on an axis of `size` into a `side` table, in float32
    as transformers. -> (n 2 int, n 2 float32)."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weights = np.maximum(
        np.float32(1) - np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32)), 0
    )
    return taps, weights.astype(np.float32)


def _chunk_layouts(blocks: np.ndarray, block: int, heads: int):
    """The layouts of segments of `blocks` blocks each aligned to `block`: every query chunk size whose
    chunks' segments share their first key block (chunks split where it changes), within MAX_CHUNK_LOGITS.
    Yields (segment starts, layout)."""
    count = bucket_blocks(int(blocks.sum()))
    key_blocks = min(count, bucket_blocks(int(blocks.max())))
    starts = np.cumsum([0, *blocks[:-1]])
    first = np.repeat(np.minimum(starts, count - key_blocks), blocks)  # of each non-empty block
    splits = int(np.gcd.reduce(np.flatnonzero(np.diff(first)) + 1, initial=0))  # 0: one first key block
    most = max(1, MAX_CHUNK_LOGITS // (heads * block * key_blocks * block))
    for size in range(1, min(count, most) + 1):
        if splits % size == 0:
            yield starts * block, Layout(count * block, block, key_blocks, size)


def _segment_layout(
    lengths: np.ndarray, merge_unit: int, row_cost: int, heads: int
) -> tuple[np.ndarray, Layout]:
    """Where each attention segment starts in the padded call, and the layout. Up to DENSE_UP_TO patches the
    segments are packed into one block (masked dense attention); beyond, each starts on a block boundary, so
    a query chunk reads only the key blocks of its own segments. Of the block and chunk sizes, the cheapest:
    rows x row_cost (the linears, in logits per row) plus the logits computed."""
    n = int(lengths.sum())
    if n <= DENSE_UP_TO:
        size = bucket_patches(n)
        return np.cumsum([0, *lengths[:-1]]), Layout(size, size, 1)

    def cost(option) -> float:
        layout = option[1]
        rows = layout.query_blocks * layout.block
        logits = layout.chunks * (rows + CHUNK_OVERHEAD_ROWS) * layout.key_blocks * layout.block
        return layout.patches * row_cost + logits

    options = []
    for block in (math.lcm(b, merge_unit) for b in ALIGNED_BLOCKS):
        options += _chunk_layouts(-(-lengths // block), block, heads)
    return min(options, key=cost)


def grid_tables(config: VisionConfig, grid_thw: Any) -> tuple[Grid, Layout]:
    """The per-row tables of a call laid out by `_segment_layout`, and its static layout."""
    grid = check_grid(config, grid_thw)
    m, side, unit = config.spatial_merge_size, config.side, config.merge_unit
    lengths = np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])  # one segment per (item, t)
    row_cost = 2 * config.hidden_size + config.intermediate_size  # qkv, proj, MLP flops / attention's per key
    starts, layout = _segment_layout(lengths, unit, row_cost, config.num_heads)
    size = layout.patches
    positions, pos_index = np.zeros((size, 2), np.int32), np.zeros((size, 4), np.int32)
    pos_weight, segments = np.zeros((size, 4), np.float32), np.full(size, -1, np.int32)
    segment = 0
    for t, h, w in grid.tolist():
        row, col = _patch_coords(h, w, m)
        (r_taps, r_w), (c_taps, c_w) = _axis_taps(row, h, side), _axis_taps(col, w, side)
        index = (r_taps[:, :, None] * side + c_taps[:, None, :]).reshape(-1, 4)
        weight = (r_w[:, :, None] * c_w[:, None, :]).reshape(-1, 4)
        for _ in range(t):  # frame groups share the tables
            rows = slice(starts[segment], starts[segment] + h * w)
            positions[rows], pos_index[rows], pos_weight[rows] = np.stack([row, col], 1), index, weight
            segments[rows] = segment
            segment += 1
    valid = np.flatnonzero(segments >= 0)
    tokens = valid[::unit] // unit
    blocks = size // layout.block
    first = np.repeat(np.minimum(starts // layout.block, blocks - layout.key_blocks), lengths)
    key_block_start = np.full(layout.chunks, blocks - layout.key_blocks, np.int32)
    np.minimum.at(key_block_start, valid // (layout.block * layout.query_blocks), first.astype(np.int32))
    tables = Grid(
        positions=positions,
        pos_index=pos_index,
        pos_weight=pos_weight,
        segments=segments,
        key_block_start=key_block_start,
        token_rows=np.pad(tokens, (0, size // unit - len(tokens))).astype(np.int32),
    )
    return tables, layout


# ---------------------------------------------------------------- forward


class VisionOutput(NamedTuple):
    embeds: jax.Array  # m out_hidden_size (m = padded patches / merge unit); rows < tokens are valid
    deepstack: jax.Array | None  # n_deepstack m out_hidden_size, the features of blocks deepstack_indexes
    tokens: int  # valid merged tokens (sum of t*h*w / merge unit)


def _rotary(config: VisionConfig, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """2-D axial rotary: hd/4 frequencies on the row and on the column, [row | col] twice. -> n hd."""
    inv_freq = rope_inv_freq(config.head_dim // 2, config.rope_theta)  # hd/4 frequencies
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # n 2 f
    return rope_cos_sin(angles.reshape(positions.shape[0], -1), dtype)


def _block(p: dict, config: VisionConfig, x, cos, sin, grid: Grid, layout: Layout) -> jax.Array:
    """Pre-LN ViT block, attention inside each segment. x: n d -> n d."""
    n, d = x.shape
    h = layer_norm(p["norm1"], x, LN_EPS)
    qkv = linear(p["attn"]["qkv"], h).reshape(n, 3, config.num_heads, config.head_dim)
    o = segment_attention(
        qkv, segments=grid.segments, key_block_start=grid.key_block_start,
        key_blocks=layout.key_blocks, block=layout.block, query_blocks=layout.query_blocks, rope=(cos, sin),
    )  # fmt: skip
    x = x + linear(p["attn"]["proj"], o.reshape(n, d))
    h = activation(config.hidden_act)(linear(p["fc1"], layer_norm(p["norm2"], x, LN_EPS)))
    return x + linear(p["fc2"], h)


def _merge(p: dict, config: VisionConfig, x: jax.Array, *, postshuffle: bool) -> jax.Array:
    """2x2 patch merger: LayerNorm per patch (final merger) or over the 4 concatenated patches (deepstack),
    then Linear -> exact GELU -> Linear. x: n d -> n/4 out_hidden_size."""
    wide = config.hidden_size * config.merge_unit
    if postshuffle:
        h = layer_norm(p["ln_q"], x.reshape(-1, wide), LN_EPS)
    else:
        h = layer_norm(p["ln_q"], x, LN_EPS).reshape(-1, wide)
    h = jax.nn.gelu(linear(p["mlp0"], h), approximate=False)
    return linear(p["mlp2"], h)


@functools.partial(jax.jit, static_argnums=(1, 4))
def forward(
    params: dict, config: VisionConfig, pixels: jax.Array, grid: Grid, layout: Layout
) -> tuple[jax.Array, jax.Array | None]:
    """pixels: n patch_dim (n = layout.patches, laid out as `grid`); grid: tables of `grid_tables`.
    -> (merged n/4 out_hidden_size, deepstack n_ds n/4 out_hidden_size or None), the valid tokens first."""
    c = config
    dtype = params["patch_embed"]["bias"].dtype
    with jax.named_scope("patch_embed"):
        kernel = params["patch_embed"]["kernel"]
        x = linear({"kernel": kernel.reshape(-1, kernel.shape[-1]), "bias": params["patch_embed"]["bias"]},
                   pixels.astype(dtype), precision=jax.lax.Precision.HIGHEST)  # fmt: skip
        table = params["pos_embed"]["embedding"]
        pe = jnp.einsum("nk,nkd->nd", grid.pos_weight, table[grid.pos_index].astype(jnp.float32))  # 4 taps
        x = x + pe.astype(dtype)
    cos, sin = _rotary(c, grid.positions, jnp.float32)
    kept = c.deepstack_indexes

    def step(carry, xs):
        x, states = carry
        p, i = xs
        with jax.named_scope("vision_block"):
            x = _block(p, c, x, cos, sin, grid, layout)
        states = tuple(jnp.where(i == j, x, s) for j, s in zip(kept, states, strict=True))
        return (x, states), None

    (x, states), _ = jax.lax.scan(step, (x, tuple(x for _ in kept)), (params["blocks"], jnp.arange(c.depth)))
    with jax.named_scope("mergers"):
        merged = _merge(params["merger"], c, x, postshuffle=False)[grid.token_rows]
        deepstack = None
        if kept:
            merge = functools.partial(_merge, config=c, postshuffle=True)
            deepstack = jax.vmap(lambda p, s: merge(p, x=s)[grid.token_rows])(
                params["deepstack"], jnp.stack(states)
            )
    return merged, deepstack


def encode(params: dict, config: VisionConfig, pixel_values: Any, grid_thw: Any) -> VisionOutput:
    """Validated entry point: the processor's patches (N, C*T*p*p) of all images (or all videos) of a call and
    their grids (items, 3). Lays the patches out on the rows of `grid_tables` (segments on block boundaries,
    padding to a bucket), so grids of one layout share one compilation."""
    pixels = np.asarray(pixel_values)
    if pixels.ndim != 2 or pixels.shape[1] != config.patch_dim:
        raise ValueError(f"pixel values must be (patches, {config.patch_dim}), got shape {pixels.shape}")
    check_grid(config, grid_thw, pixels.shape[0])
    tables, layout = grid_tables(config, grid_thw)
    laid_out = np.zeros((layout.patches, pixels.shape[1]), pixels.dtype)
    laid_out[tables.segments >= 0] = pixels
    merged, deepstack = forward(params, config, laid_out, tables, layout)
    return VisionOutput(merged, deepstack, pixels.shape[0] // config.merge_unit)


def token_counts(config: VisionConfig, grid_thw: Any) -> np.ndarray:
    """Merged tokens of each item: t*h*w / merge unit."""
    return check_grid(config, grid_thw).prod(1) // config.merge_unit
