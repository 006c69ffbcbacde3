"""Plain causal LMs (Qwen2, Qwen3, Qwen3-MoE): one decoder at the root of the checkpoint."""

from omni_jax.convert.parts import CheckpointMap, Part
from omni_jax.models import decoder

MAPS = tuple(
    CheckpointMap(model_type, (architecture,), (Part(None, decoder, decoder.Config, ""),))
    for model_type, architecture in (
        ("qwen2", "Qwen2ForCausalLM"),
        ("qwen3", "Qwen3ForCausalLM"),
        ("qwen3_moe", "Qwen3MoeForCausalLM"),
    )
)
