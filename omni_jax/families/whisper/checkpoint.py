"""Whisper (HF `whisper` folders): the encoder; the text decoder is kept verbatim for now."""

from omni_jax.convert.parts import CheckpointMap, Part
from omni_jax.models import whisper_encoder

MAPS = (
    CheckpointMap(
        "whisper",
        ("WhisperForConditionalGeneration", "WhisperModel"),
        (
            Part(
                None, whisper_encoder, whisper_encoder.WhisperEncoderConfig, "model.encoder.",
                aliases=(("model.", ""),),
            ),
        ),
        passthrough=(r"(model\.)?decoder\.", r"proj_out\."),
        notes="only the encoder is implemented; decoder weights are kept verbatim (passthrough)",
    ),
)  # fmt: skip
