"""Fine-tuning: masked-loss training of AudioFlamingo3 and the Qwen3-Omni Thinker (optax, orbax, grain).

    python -m omni_jax.train --config train/af3-tiny.json [--resume] [--set steps=100]

loss (transformers' ForCausalLMLoss and router aux loss), models (per-family loss sums), data (manifest ->
grain batches), step (optimizer, freezing, accumulation), checkpoint (orbax), metrics, export, recipe, loop.
"""
