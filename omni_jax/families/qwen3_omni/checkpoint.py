"""Where Qwen3-Omni's HF keys land: the whole model (thinker, talker, code predictor, code2wav) or a
thinker saved on its own."""

from omni_jax.convert.parts import CheckpointMap, Part
from omni_jax.models import aut_encoder, code2wav, decoder, vision_encoder

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
            Part("talker", decoder, decoder.Config, "talker.", ("talker_config", "text_config")),
            Part(
                "code_predictor", decoder, decoder.Config, "talker.code_predictor.",
                ("talker_config", "code_predictor_config"),
            ),
            Part("code2wav", code2wav, code2wav.Config, "code2wav."),
        ),
        passthrough=(
            r"talker\.(model\.codec_embedding|codec_head|text_projection|hidden_projection)\.",
            r"talker\.code_predictor\.(model\.codec_embedding|lm_head)\.",
        ),
        notes="the talker's codec embeddings, projections and heads have no omni_jax model yet; they are "
        "kept verbatim (passthrough)",
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
