"""Vision, JAX jit vs transformers eager in one process: the Qwen3-Omni vision encoder at a small config on 1
and 4 images of 448x448 and a 16-frame 448x448 video (merged tokens and deepstack features, `encode` end to
end: grid tables, segment layout), and preprocessing of 8 images of 600x800 (numpy integer resize vs
transformers' torchvision Qwen2VLImageProcessor where torchvision imports, else its PIL backend; the row says
which). Each pair of timings is interleaved (JAX, reference, JAX, ...) so that load on a shared machine hits
both alike; the load average goes to stderr. `--preprocess` runs only the preprocessing rows (no jax: for an
environment with torchvision)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from common import emit, paired_median_times, parser, row  # noqa: E402

from omni_jax.processing import vision  # noqa: E402

# the release's structure at a small width: 4 blocks, deepstack after 1 and 3, 16-px patches, 48x48 table
SMALL = dict(
    depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, patch_size=16, temporal_patch_size=2,
    spatial_merge_size=2, out_hidden_size=512, num_position_embeddings=2304, deepstack_visual_indexes=[1, 3],
)  # fmt: skip
RELEASE = dict(
    patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    min_pixels=3136, max_pixels=12845056,
)  # fmt: skip


def encoder_rows(torch, repeats: int) -> list[dict]:
    import jax
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
        Qwen3OmniMoeVisionEncoderConfig,
    )
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeVisionEncoder

    from omni_jax import parity
    from omni_jax.models import vision_encoder

    torch.manual_seed(0)
    module = Qwen3OmniMoeVisionEncoder(Qwen3OmniMoeVisionEncoderConfig(**SMALL)).eval()
    config, params = parity.from_torch(module)
    params = jax.device_put(params)
    rows = []
    for name, grid in (("1 image 448x448", [[1, 28, 28]]), ("4 images 448x448", [[1, 28, 28]] * 4),
                       ("16-frame video 448x448", [[8, 28, 28]])):  # fmt: skip
        grid = np.asarray(grid)
        pixels = np.random.default_rng(0).standard_normal((int(grid.prod(1).sum()), 1536)).astype(np.float32)
        torch_pixels, torch_grid = torch.from_numpy(pixels), torch.from_numpy(grid)

        def run_torch(x=torch_pixels, g=torch_grid):
            with torch.no_grad():
                module(x, g)

        def run_jax(x=pixels, g=grid):
            jax.block_until_ready(vision_encoder.encode(params, config, x, g))

        t_jax, t_torch = paired_median_times((run_jax, run_torch), warmup=2, repeats=repeats)
        rows.append(row(f"vision encoder small, {name}", t_jax * 1e3, t_torch * 1e3, "ms"))
    return rows


def preprocess_rows(repeats: int) -> list[dict]:
    try:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as Reference

        Reference(**RELEASE)
        backend = "torchvision"
    except (ImportError, RuntimeError):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as Reference,
        )

        backend = "PIL"
    reference = Reference(**RELEASE)
    y, x = np.mgrid[0:600, 0:800]
    images = [((np.stack([x, y, x + y], -1) * (i + 1) + i * 17) % 256).astype(np.uint8) for i in range(8)]

    def run_reference():
        reference(images=images, return_tensors="np")

    def run_ours():
        vision.preprocess_images(images)

    t_ours, t_ref = paired_median_times((run_ours, run_reference), warmup=2, repeats=repeats)
    return [row(f"preprocess 8 images 600x800 vs {backend}", t_ours * 1e3, t_ref * 1e3, "ms")]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--preprocess", action="store_true", help="only the preprocessing rows (no jax)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = [] if args.preprocess else encoder_rows(torch, args.repeats)
    emit(rows + preprocess_rows(args.repeats), args.json)
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
