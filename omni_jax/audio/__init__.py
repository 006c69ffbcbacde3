"""Audio: file I/O and Whisper log-mel features."""

from omni_jax.audio.features import check_mel_bins, log_mel, log_mel_spectrogram, mel_filters, pad_waveforms
from omni_jax.audio.io import AudioWriter, load_audio, resample, save_audio

__all__ = [
    "AudioWriter",
    "check_mel_bins",
    "load_audio",
    "log_mel",
    "log_mel_spectrogram",
    "mel_filters",
    "pad_waveforms",
    "resample",
    "save_audio",
]
