"""Convert downloaded HF folders of the released models to omni_jax folders (bfloat16), then check them.

    python convert/real_checkpoints.py ~/hf/audio-flamingo-3-hf ~/ckpt/af3
    python convert/real_checkpoints.py ~/hf/Qwen3-Omni-30B-A3B-Instruct ~/ckpt/qwen3-omni --dtype float32

omni_jax never fetches weights: download the folders first. The logic is `omni_jax.convert.run`.
"""

import argparse

from omni_jax.convert import run

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("src")
parser.add_argument("dst")
parser.add_argument("--dtype", default="bfloat16", choices=run.DTYPES)
args = parser.parse_args()
manifest = run.to_jax(args.src, args.dst, dtype=args.dtype, quiet=False)
print(run.describe(args.dst).splitlines()[0], f"({len(manifest['params'])} parameters)")
