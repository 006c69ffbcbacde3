"""Where Whisper's HF keys land (`whisper` folders, and CTranslate2 folders read as them): the encoder and
the text decoder subtrees. `proj_out.weight` is the decoder's embedding (tied): kept verbatim, never read."""

from omni_jax.convert.parts import CheckpointMap, Part
from omni_jax.models import whisper_decoder, whisper_encoder

MAPS = (
    CheckpointMap(
        "whisper",
        ("WhisperForConditionalGeneration", "WhisperModel"),
        (
            Part(
                "encoder", whisper_encoder, whisper_encoder.WhisperEncoderConfig, "model.encoder.",
                aliases=(("model.", ""),),
            ),
            Part(
                "decoder", whisper_decoder, whisper_decoder.WhisperDecoderConfig, "model.decoder.",
                aliases=(("model.", ""),),
            ),
        ),
        passthrough=(r"proj_out\.",),
    ),
)  # fmt: skip
