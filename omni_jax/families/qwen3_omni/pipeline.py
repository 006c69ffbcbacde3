"""Qwen3-Omni pipeline: clips + requests -> chat template + processor -> AuT + fusion -> MoE decoding, and
with the talker's weights speech: talker prompt -> Talker + code predictor -> Code2Wav (omni_jax.families.
qwen3_omni.speech).

    pipe = load("checkpoints/qwen3-omni")  # HF folder (thinker weights suffice for text) or its conversion
    inputs = pipe.prepare([clip])  # default request: "Transcribe the input speech."
    inputs = pipe.prepare(images=["cat.png"], prompts=["What is this?"])  # or videos=[...], fps=2.0
    print(pipe.decode(pipe.generate(inputs, max_new_tokens=64)))
    out = pipe.generate(inputs, max_new_tokens=64, return_audio=True, speaker="Ethan")  # out.ids, out.audio
    for event in pipe.stream(inputs, max_new_tokens=64, return_audio=True, packet=4): ...

Generation stops at `<|im_end|>` (the config's im_end_token_id, transformers' thinker EOS). The talker's
settings take transformers' stage-prefixed names and defaults (talker_max_new_tokens 4096, talker_do_sample
True, talker_temperature 0.9, talker_top_k 50, talker_top_p 1.0, talker_repetition_penalty 1.05). On CPU the
decoders run in `decoder.cpu_layout` (omni_jax.families.base.decode_layout), the audio encoder in
`aut_encoder.cpu_layout` and Code2Wav in `code2wav.cpu_layout`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from omni_jax.families.base import BasePipeline, decode_layout, load_checkpoint, on_one_cpu
from omni_jax.families.qwen3_omni import speech
from omni_jax.families.qwen3_omni import system as thinker
from omni_jax.families.qwen3_omni.checkpoint import MAPS
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor
from omni_jax.inference.sampling import GREEDY, Sampling
from omni_jax.models import aut_encoder, code2wav
from omni_jax.models.code2wav import SAMPLE_RATE
from omni_jax.processing.common import as_clips, as_requests, check_audio_length

DEFAULT_PROMPT = "Transcribe the input speech."
VISUAL_PROMPT = "Describe what you see."
IM_END = 151645
TALKER_OPTIONS = (
    "talker_max_new_tokens", "talker_do_sample", "talker_temperature", "talker_top_k", "talker_top_p",
    "talker_repetition_penalty",
)  # fmt: skip


def conversations(
    audios: list[np.ndarray] | None, prompts: list[str | None] | None, *, images: list | None = None,
    videos: list | None = None,
) -> list[list[dict]]:  # fmt: skip
    """One user turn per row: its image, video and audio (each list one item per row, or None), then its
    request (None: DEFAULT_PROMPT for audio, else VISUAL_PROMPT)."""
    given = {k: v for k, v in (("image", images), ("video", videos), ("audio", audios)) if v is not None}
    rows = {len(v) for v in given.values()}
    if not given or len(rows) != 1 or 0 in rows:
        raise ValueError(
            "need one audio / image / video per row for each kind given: "
            f"{ {k: len(v) for k, v in given.items()} }"
        )
    n = rows.pop()
    prompts = as_requests(prompts, n)
    default = DEFAULT_PROMPT if "audio" in given else VISUAL_PROMPT
    chats = []
    for i in range(n):
        content = [{"type": kind, kind: items[i]} for kind, items in given.items()]
        if "audio" in given:
            content[-1]["audio"] = np.asarray(audios[i], np.float32)
        content.append({"type": "text", "text": default if prompts[i] is None else prompts[i]})
        chats.append([{"role": "user", "content": content}])
    return chats


class Speech(NamedTuple):
    """`generate(..., return_audio=True)`: new text ids b n, and per row its codec frames (G n_r) and its
    waveform (float32 in [-1, 1] at `sample_rate`)."""

    ids: np.ndarray
    codes: list[np.ndarray]
    audio: list[np.ndarray]
    sample_rate: int = SAMPLE_RATE


class Event(NamedTuple):
    """One `stream` event: kind "text" (data: each row's new text) or "audio" (data: each row's new
    samples, possibly empty)."""

    kind: str
    data: list


def talker_settings(options: dict) -> tuple[int, speech.TalkerSettings]:
    """(talker_max_new_tokens, TalkerSettings) of transformers-named talker_* keywords."""
    if unknown := sorted(set(options) - set(TALKER_OPTIONS)):
        raise ValueError(f"unknown talker options {unknown}; known: {list(TALKER_OPTIONS)}")
    fields = {k[len("talker_") :]: v for k, v in options.items() if k != "talker_max_new_tokens"}
    return int(options.get("talker_max_new_tokens", 4096)), speech.TalkerSettings(**fields)


class Pipeline(BasePipeline):
    """A loaded Qwen3-Omni: config, params, processor, the EOS / pad ids, and `speech` (SpeechConfig, None
    without talker / code2wav weights)."""

    system = thinker

    def __init__(self, config, params, processor, eos_ids, pad_id, speech_config=None):
        super().__init__(config, params, processor, eos_ids, pad_id)
        self.speech = speech_config

    def prepare(
        self, audios: list[np.ndarray] | None = None, prompts: list[str | None] | None = None, *,
        images: list | None = None, videos: list | None = None, fps: float = 2.0,
        use_audio_in_video: bool = False,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """16-kHz clips, images (paths, PIL images, arrays) and videos (files, or frame arrays sampled at
        `fps`), one of each kind given per row, and one request each -> numpy model inputs (left-padded).
        use_audio_in_video: each video file's sound track is heard too (and the flag goes to the model)."""
        clips = None if audios is None else as_clips(audios, name="audios")
        if clips is not None:
            check_audio_length(clips, self.processor.config.max_audio_len)
        chats = conversations(clips, prompts, images=images, videos=videos)
        options = {"fps": fps, "use_audio_in_video": use_audio_in_video} if videos else {}
        inputs = self.processor.apply_chat_template(
            chats, tokenize=True, add_generation_prompt=True, return_dict=True, processor_kwargs=options
        )
        return inputs | ({"use_audio_in_video": True} if videos and use_audio_in_video else {})

    def generate(
        self, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0,
        return_audio: bool = False, speaker: str = "Ethan", **talker_options: Any,
    ) -> np.ndarray | Speech:  # fmt: skip
        """New token ids b n (finished rows padded with the pad id; n stops once every row is done); with
        return_audio, a `Speech` (ids, codes and 24-kHz waveform per row, as transformers' generate)."""
        talker_max, settings = self._check_speech(return_audio, speaker, talker_options)
        ids = super().generate(inputs, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
        ids = ids[:, : _answer_length(ids, self.eos_ids)]
        if not return_audio:
            return ids
        tokens, frames = speech.talk(
            self.params, self.speech, self._talker_prompt(inputs, ids, speaker), max_new_tokens=talker_max,
            settings=settings, seed=seed, text_slots=max_new_tokens - 1,
        )  # fmt: skip
        eos = self.speech.talker.codec_id("eos")
        audio = speech.waveforms(self.params["code2wav"], self.speech.code2wav, tokens, frames, eos)
        lengths = speech.frame_lengths(tokens, frames, eos)
        return Speech(ids, [f[:, :n] for f, n in zip(frames, lengths, strict=True)], audio)

    def stream(
        self, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0,
        return_audio: bool = False, speaker: str = "Ethan", packet: int = 4, first_packet: int = 1,
        **talker_options: Any,
    ) -> Iterator:  # fmt: skip
        """Without return_audio, each step's tokens (b,) as they are chosen. With it, `Event`s as they come:
        the Thinker's text deltas interleaved with audio packets (`packet` frames, the first `first_packet`)
        whose concatenation per row equals `generate(..., return_audio=True).audio`. The Talker starts after
        the Thinker's first token and follows it (talker step f needs text ids 0..f): the Thinker decodes
        `first_packet`, then `packet` tokens per jitted call, the Talker as many steps as they allow.
        Bad settings fail here, before any work."""
        if not return_audio:
            return super().stream(inputs, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
        talker_max, settings = self._check_speech(return_audio, speaker, talker_options)
        if packet < 1 or first_packet < 1:
            raise ValueError(
                f"packet sizes must be >= 1 frame, got packet={packet}, first_packet={first_packet}"
            )
        options = dict(max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
        return self._speech_events(inputs, options, speaker, talker_max, settings, packet, first_packet)

    def _speech_events(self, inputs, options, speaker, talker_max, settings, packet, first_packet):
        max_new, eos = options["max_new_tokens"], self.eos_ids
        blocks = thinker.stream_blocks(
            self.params, self.config, inputs, sizes=(first_packet, packet), **self._options(inputs, **options)
        )
        ids = next(blocks)
        shown = yield from _text_event(None, self._partial_text(ids))
        ended = _thinker_finished(ids, eos, max_new)
        prompt = self._talker_prompt(inputs, ids, speaker, finished=ended)
        run = speech.TalkerRun(
            self.params, self.speech, prompt, max_new_tokens=talker_max, settings=settings,
            seed=options["seed"], text_slots=max_new - 1,
        )  # fmt: skip
        wav = speech.WavStream(
            self.params["code2wav"], self.speech.code2wav, len(ids), packet=packet, first_packet=first_packet
        )
        steps, silent, codec_eos = first_packet, np.zeros(len(ids), bool), self.speech.talker.codec_id("eos")
        while not (run.finished and ended):
            trailing = speech.trailing_ids(self.speech, ids, eos, finished=ended)
            if not run.finished and run.allowed(trailing.shape[1], ended) > run.read:
                tokens, frames = run.advance(trailing, finished=ended, steps=steps)
                steps = packet
                first = run.read - tokens.shape[1]
                if (chunk := _push_frames(wav, tokens, frames, first, silent, codec_eos)) is not None:
                    yield Event("audio", chunk)
                continue
            ids = np.concatenate([ids, next(blocks)], axis=1)
            ended = _thinker_finished(ids, eos, max_new)
            texts = self.decode(ids) if ended else self._partial_text(ids)
            shown = yield from _text_event(shown, texts)
        if (chunk := wav.flush()) is not None:
            yield Event("audio", chunk)

    def _partial_text(self, ids: np.ndarray) -> list[str]:
        """Text so far; incomplete characters (U+FFFD at the end) wait for their next token."""
        return [t.rstrip("\ufffd") for t in self.decode(ids)]

    def _check_speech(self, return_audio: bool, speaker: str, options: dict):
        if not return_audio:
            if options:
                raise ValueError(f"talker options {sorted(options)} need return_audio=True")
            return None, None
        if self.speech is None:
            raise ValueError(
                "return_audio=True needs the talker and code2wav weights: this checkpoint has only "
                f"{sorted(self.params)} (a thinker-only checkpoint, or enable_audio_output false)"
            )
        self.speech.talker.speaker_id(speaker)
        return talker_settings(options)

    def _talker_prompt(self, inputs: dict, ids: np.ndarray, speaker: str, finished: bool = True):
        return speech.prompt_for(
            self.params, self.config, self.speech, inputs, ids, speaker=speaker, thinker_eos=self.eos_ids,
            finished=finished,
        )  # fmt: skip


def _text_event(shown: list[str] | None, texts: list[str]):
    """Yield what `texts` add to `shown` (one "text" Event, when anything is new); return `texts`."""
    before = shown or [""] * len(texts)
    if any(t != b for t, b in zip(texts, before, strict=True)):
        yield Event("text", [t[len(b) :] for t, b in zip(texts, before, strict=True)])
    return texts


def _push_frames(wav, tokens: np.ndarray, frames: np.ndarray, first: int, silent: np.ndarray, eos: int):
    """Feed a talker run to `wav`: talker step i (i >= first) chose tokens[:, i - first] and completed frame
    i - 1; a row whose token is codec_eos keeps its frames before it (`silent` marks those rows, updated).
    -> the packets decoded, joined per row, or None."""
    chunks = []
    for j in range(tokens.shape[1]):
        for r in np.flatnonzero((tokens[:, j] == eos) & ~silent):
            wav.end_row(int(r), first + j)
        silent |= tokens[:, j] == eos
        if first + j > 0 and (chunk := wav.push(frames[:, :, j - (first == 0)])) is not None:
            chunks.append(chunk)
    return None if not chunks else [np.concatenate(c) for c in zip(*chunks, strict=True)]


def _thinker_finished(ids: np.ndarray, eos_ids, max_new: int) -> bool:
    """The Thinker stops once every row has emitted an EOS, or at max_new tokens."""
    return ids.shape[1] >= max_new or bool(np.isin(ids, eos_ids).any(1).all())


def _answer_length(ids: np.ndarray, eos_ids) -> int:
    """Steps up to the last row's EOS (transformers stops once every row is done)."""
    done = np.isin(ids, eos_ids).cumsum(1) > 0
    return min(ids.shape[1], int((~done).sum(1).max()) + 1)


def thinker_stop_ids(path: Path, hf_config: dict) -> tuple[tuple[int, ...], int]:
    """(EOS ids, pad id): `<|im_end|>` as transformers' Qwen3-Omni generate; pad from generation_config.json,
    else the EOS (transformers' fallback)."""
    eos = int(hf_config.get("im_end_token_id", IM_END))
    file = path / "generation_config.json"
    pad = json.loads(file.read_text()).get("pad_token_id") if file.is_file() else None
    return (eos,), eos if pad is None else int(pad)


def load(path, *, dtype=None) -> Pipeline:
    """An HF Qwen3-Omni folder (`model_type` qwen3_omni_moe) or its omni_jax conversion. The thinker with its
    audio and vision encoders is required; the talker and code2wav, when present, give speech output."""
    path, hf_config, config, params = load_checkpoint(path, MAPS, thinker, thinker.ThinkerConfig, dtype)
    audio = params["audio_encoder"]
    kept = {
        "audio_encoder": aut_encoder.cpu_layout(audio) if on_one_cpu(audio) else audio,
        "thinker": decode_layout(params["thinker"], config.text),
        **{k: params[k] for k in ("vision_encoder",) if k in params},
    }
    speech_config = None
    if "talker" in params and "code2wav" in params:
        speech_config = speech.SpeechConfig.from_hf(hf_config)
        kept["talker"] = speech.decode_layout(params["talker"], speech_config.talker)
        c2w = params["code2wav"]
        kept["code2wav"] = code2wav.cpu_layout(c2w, speech_config.code2wav) if on_one_cpu(c2w) else c2w
    return Pipeline(
        config,
        kept,
        Qwen3OmniProcessor.from_pretrained(path),
        *thinker_stop_ids(path, hf_config),
        speech_config,
    )
