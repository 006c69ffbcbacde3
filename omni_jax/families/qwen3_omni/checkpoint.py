"""Where Qwen3-Omni's HF keys land: the whole model (thinker, talker with its code predictor, code2wav) or
a thinker saved on its own. The audio encoder and the thinker are required; the speech parts are optional."""

from omni_jax.convert.parts import CheckpointMap, Part
from omni_jax.models import aut_encoder, code2wav, decoder, talker, vision_encoder

THINKER_ALIASES = (("model.", "model.language_model."),)

MAPS = (
    CheckpointMap(
        "qwen3_omni_moe",
        ("Qwen3OmniMoeForConditionalGeneration",),
        (
            Part(
                "audio_encoder", aut_encoder, aut_encoder.AuTConfig, "thinker.audio_tower.",
                ("thinker_config",),
                aliases=(("thinker.audio_tower.", "thinker.model.audio_tower."),),
            ),
            Part(
                "vision_encoder", vision_encoder, vision_encoder.VisionConfig, "thinker.visual.",
                ("thinker_config",), aliases=(("thinker.visual.", "thinker.model.visual."),),
            ),
            Part(
                "thinker", decoder, decoder.Config, "thinker.", ("thinker_config", "text_config"),
                aliases=(("thinker.model.", "thinker.model.language_model."),),
            ),
            Part("talker", talker, talker.TalkerConfig, "talker.", ("talker_config",), optional=True),
            Part("code2wav", code2wav, code2wav.Config, "code2wav.", optional=True),
        ),
    ),
    CheckpointMap(
        "qwen3_omni_moe_thinker",
        ("Qwen3OmniMoeThinkerForConditionalGeneration",),
        (
            Part(
                "audio_encoder", aut_encoder, aut_encoder.AuTConfig, "audio_tower.",
                aliases=(("audio_tower.", "model.audio_tower."),),
            ),
            Part(
                "vision_encoder", vision_encoder, vision_encoder.VisionConfig, "visual.",
                aliases=(("visual.", "model.visual."),),
            ),
            Part("thinker", decoder, decoder.Config, "", ("text_config",), aliases=THINKER_ALIASES),
        ),
        notes="a thinker saved on its own",
    ),
)  # fmt: skip
