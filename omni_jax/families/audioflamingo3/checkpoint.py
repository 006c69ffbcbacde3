"""Where AudioFlamingo3's HF keys land: encoder, projector and Qwen2 decoder subtrees."""

from omni_jax.convert.parts import CheckpointMap, Part
from omni_jax.models import decoder, projector, whisper_encoder

MAPS = (
    CheckpointMap(
        "audioflamingo3",
        ("AudioFlamingo3ForConditionalGeneration",),
        (
            Part(
                "encoder", whisper_encoder, whisper_encoder.WhisperEncoderConfig, "audio_tower.",
                aliases=(("audio_tower.", "model.audio_tower."),),
            ),
            Part(
                "projector", projector, projector.ProjectorConfig, "multi_modal_projector.",
                aliases=(("multi_modal_projector.", "model.multi_modal_projector."),),
            ),
            Part(
                "decoder", decoder, decoder.Config, "language_model.", ("text_config",),
                aliases=(
                    ("language_model.model.", "model.language_model."),
                    ("language_model.lm_head.", "lm_head."),
                ),
            ),
        ),
    ),
)  # fmt: skip
