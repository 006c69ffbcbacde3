"""Whisper pipeline: 16-kHz clips -> log-mel windows -> batched on-device decoding -> text.

    pipe = load(DIR)    # HF whisper folder, CTranslate2 folder (tiny.en: ctranslate2.whisper_tiny_dir()),
                        # or an omni_jax conversion of either
    for row in pipe.transcribe([clip_a, clip_b], batch_size=8):
        print(row["text"])

Clips longer than 30 s are cut the way transformers' `pipeline("automatic-speech-recognition",
chunk_length_s=30, batch_size=B)` cuts them (30-s windows, 5-s strides on both sides); every window of every
clip is decoded in batches of `batch_size`, and each clip's windows are merged by the longest overlap of their
tokens (transformers' `_find_longest_common_sequence`), so the text is the same as that pipeline's.

    row = pipe.transcribe(clip, timestamps=True)[0]     # row["segments"]: [{"start", "end", "text"}, ...]

With timestamps the windows decode with timestamp tokens, and their ids are read as transformers'
`_decode_asr` reads them (`timestamp_chunks`): the segments are that pipeline's `return_timestamps=True`
chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omni_jax.audio.features import MAX_SAMPLES, SAMPLING_RATE, log_mel
from omni_jax.convert.plan import read_generation_config
from omni_jax.families.base import BasePipeline, load_checkpoint
from omni_jax.families.whisper import system as whisper
from omni_jax.families.whisper.checkpoint import MAPS
from omni_jax.inference.sampling import GREEDY, Sampling
from omni_jax.processing import Tokenizer
from omni_jax.processing.common import as_clips

CHUNK = MAX_SAMPLES  # 30 s
STRIDE = CHUNK // 6  # transformers' default stride_length_s = chunk_length_s / 6, on each side


class Pipeline(BasePipeline):
    """A loaded Whisper checkpoint: config (with its generation settings), params and tokenizer."""

    system = whisper
    input_key = "input_features"

    @staticmethod
    def _max_new_tokens(value):
        """None: up to the checkpoint's max_length."""
        return None if value is None else BasePipeline._max_new_tokens(value)

    def prepare(self, audios: Sequence[np.ndarray], prompts: Sequence[str | None] | None = None) -> dict:
        """<= 30-s 16-kHz clips -> {"input_features": b mel 3000} (zero-padded to 30 s, as transformers)."""
        if prompts is not None and any(p is not None for p in prompts):
            raise ValueError("Whisper transcribes; it takes no text request (leave the prompt out)")
        seconds = [len(a) / SAMPLING_RATE for a in audios]
        if long := [f"{i} ({s:.1f} s)" for i, s in enumerate(seconds) if s > CHUNK / SAMPLING_RATE]:
            raise ValueError(
                f"audio {', '.join(long)} longer than the 30-s window: use transcribe(), which cuts long "
                "audio into windows (long-form)"
            )
        features, _ = log_mel(list(audios), num_mel_bins=self.config.encoder.num_mel_bins)
        return {"input_features": np.asarray(features, self.params["encoder"]["conv1"]["kernel"].dtype)}

    def transcribe(
        self, audios, *, sampling_rate: int = SAMPLING_RATE, batch_size: int = 8, long_form: bool = True,
        max_new_tokens: int | None = None, sampling: Sampling = GREEDY, seed: int = 0,
        timestamps: bool = False,
    ) -> list[dict]:  # fmt: skip
        """Text and token ids of each clip (a 1-D waveform or a list of them). Clips over 30 s are cut into
        windows (unless `long_form` is False: an error); all windows decode in batches of `batch_size`. With
        `timestamps`, also "segments": [{"start", "end", "text"}] in seconds (transformers' pipeline chunks
        with `return_timestamps=True`; an end is None when the speech runs past the last timestamp)."""
        clips = as_clips(audios, sampling_rate)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not long_form:
            self.prepare(clips)  # the > 30-s check
        if timestamps:
            whisper.check_timestamps(self.config)
        windows = [chunk_windows(clip) for clip in clips]
        flat = [w for clip_windows in windows for w, _ in clip_windows]
        tokens = self._decode_windows(flat, batch_size, max_new_tokens, sampling, seed, timestamps)
        out, i = [], 0
        for clip_windows in windows:
            rows = [[int(t) for t in self.decode_ids(ids)] for ids in tokens[i : i + len(clip_windows)]]
            i += len(clip_windows)
            out.append(self._segments(rows, [s for _, s in clip_windows]) if timestamps else self._text(rows))
        return out

    def _text(self, rows: list[list[int]]) -> dict:
        """One clip's text and token ids from its windows' ids (merged at their overlaps)."""
        ids = merge_windows([self._text_ids(row) for row in rows])
        return {"text": self.processor.decode(ids), "tokens": ids}

    def _segments(self, rows: list[list[int]], strides: list[tuple[int, int, int]]) -> dict:
        """One clip's text, text ids and timed segments from its windows' timestamped ids."""
        g, c = self.config.generation, self.config.encoder
        chunks = timestamp_chunks(
            rows, [tuple(n / SAMPLING_RATE for n in s) for s in strides],
            text_end=min(g.eos_token_id, g.decoder_start_token_id), timestamp_begin=g.timestamp_begin,
            precision=(CHUNK // SAMPLING_RATE) / c.max_source_positions, segment_size=c.max_source_positions,
        )  # fmt: skip
        segments = [{"start": a, "end": b, "text": self.processor.decode(ids)} for (a, b), ids in chunks]
        tokens = [t for _, ids in chunks for t in ids]
        return {"text": "".join(s["text"] for s in segments), "tokens": tokens, "segments": segments}

    def _decode_windows(self, windows, batch_size, max_new_tokens, sampling, seed, timestamps):
        """Generated ids of each window, in batches of `batch_size` (the last one filled with copies of its
        first window, so every batch has one shape)."""
        size = min(batch_size, len(windows))
        out = []
        for start in range(0, len(windows), size):
            batch = windows[start : start + size]
            inputs = self.prepare(batch + batch[:1] * (size - len(batch)))
            ids = self.generate(
                inputs, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed, timestamps=timestamps
            )
            out += list(ids[: len(batch)])
        return out

    def _text_ids(self, row: list[int]) -> list[int]:
        """Text tokens of one window (up to its EOS): special and timestamp ids dropped."""
        g = self.config.generation
        first_special = min(g.eos_token_id, g.decoder_start_token_id)
        return [int(t) for t in row if t < first_special]

    def decode_ids(self, ids: np.ndarray) -> np.ndarray:
        """One row's ids up to its first EOS."""
        end = np.flatnonzero(np.isin(ids, self.eos_ids))
        return ids[: end[0]] if len(end) else ids

    def generate(
        self, inputs: dict, *, max_new_tokens: int | None = None, sampling=GREEDY, seed=0, timestamps=False
    ) -> np.ndarray:  # fmt: skip
        """New token ids b n (finished rows padded); max_new_tokens None: up to max_length. With
        `timestamps`, transformers' `generate(return_timestamps=True)` tokens (system.decode_passes)."""
        options = self._options(inputs, max_new_tokens, sampling, seed)
        ids = whisper.generate(self.params, self.config, inputs, **options, timestamps=timestamps)
        return np.asarray(ids)


def chunk_windows(clip: np.ndarray, chunk: int = CHUNK, stride: int = STRIDE) -> list[tuple]:
    """transformers' `chunk_iter`: windows of `chunk` samples every `chunk - 2 stride`, up to the one that
    reaches the end (a window no longer than its left stride is dropped), each with its stride
    (samples, left, right: no left stride on the first, no right one on the last)."""
    if len(clip) <= chunk:
        return [(clip, (len(clip), 0, 0))]
    step = chunk - 2 * stride
    out = []
    for start in range(0, len(clip), step):
        window, last = clip[start : start + chunk], start + chunk >= len(clip)
        left = stride if start else 0
        if len(window) > left:
            out.append((window, (len(window), left, 0 if last else stride)))
        if last:
            break
    return out


def merge_windows(sequences: list[list[int]]) -> list[int]:
    """One token sequence from overlapping windows' (transformers' `_find_longest_common_sequence` without
    timestamps): each neighbour pair aligned at its best-matching overlap, split at the overlap's middle."""
    left, total = sequences[0], []
    for right in sequences[1:]:
        n, m = len(left), len(right)
        best, cut = 0.0, (n, n, 0, 0)
        for i in range(1, n + m):
            l0, l1, r0, r1 = max(0, n - i), min(n, n + m - i), max(0, i - n), min(m, i)
            matches = int(np.sum(np.asarray(left[l0:l1]) == np.asarray(right[r0:r1])))
            score = matches / i + i / 10000.0  # the epsilon favours long perfect matches
            if matches > 1 and score > best:
                best, cut = score, (l0, l1, r0, r1)
        l0, l1, r0, r1 = cut
        total += left[: (l0 + l1) // 2]
        left = right[(r0 + r1) // 2 :]
    return total + left


def timestamp_chunks(
    windows: list[list[int]], strides: list[tuple[float, float, float]], *, text_end: int,
    timestamp_begin: int, precision: float, segment_size: int,
) -> list[tuple[tuple[float | None, float | None], list[int]]]:  # fmt: skip
    """transformers' `_decode_asr` with `return_timestamps=True`: a clip's windows' ids (each window with
    its stride: seconds, left, right) -> [((start, end) seconds, text ids)]. Ids below `text_end` are text,
    from `timestamp_begin` on timestamps, the rest skipped. A chunk closes at a timestamp unless it lies in
    a stride; text across windows is merged at its overlaps; a later pass of the seek loop (timestamps going
    down) is offset by its start."""
    chunks, span, previous, skip, offset = [], [None, None], [], False, 0.0
    for tokens, (length, left, right) in zip(windows, strides, strict=True):
        offset -= left
        first = left / precision + timestamp_begin if left else timestamp_begin
        last = _right_stride_timestamp(tokens, timestamp_begin, length - right, precision) if right else None
        current, top, below, passes = [], 0.0, 0.0, 0.0  # the highest timestamp, the one before, pass offset
        for i, token in enumerate(tokens):
            if token < text_end:
                current.append(token)
                continue
            if token < timestamp_begin:
                continue
            stamp = float((token - timestamp_begin) * precision)
            if stamp < top:  # the next pass has started
                if i >= 2 and not (tokens[i - 1] >= timestamp_begin and tokens[i - 2] >= timestamp_begin):
                    passes += precision * segment_size
                else:
                    top = below
                    passes += below
            below, top = top, stamp
            time = round((token - timestamp_begin) * precision + offset + passes, 2)
            if last and token >= last:  # inside the right stride: resolved by the next window
                skip = True
            elif skip or (previous and token < first):
                skip = False
            elif span[0] is None:
                span[0] = time
            elif time != span[0]:  # (the same time twice opens, as transformers reads it)
                chunks.append(((span[0], time), merge_windows([*previous, current])))
                span, previous, current = [None, None], [], []
        offset += length - right
        if current:
            previous.append(current)
        elif not any(previous):
            span, previous = [None, None], []
    if previous:
        chunks.append((tuple(span), merge_windows(previous)))
    return chunks


def _right_stride_timestamp(tokens: list[int], timestamp_begin: int, right_start: float, precision: float):
    """The lowest of a window's last timestamps that lie in its right stride (the last one always counts)."""
    last = None
    for token in reversed(tokens):
        if token >= timestamp_begin:
            if last is not None and (token - timestamp_begin) * precision < right_start:
                break
            last = token
    return last


def check_tokenizer(path: Path, tokenizer: Tokenizer, config: whisper.Config) -> None:
    """The tokenizer must belong to the checkpoint: its size within the vocabulary, the same special ids."""
    size, vocab = tokenizer.backend.get_vocab_size(with_added_tokens=True), config.decoder.vocab_size
    g = config.generation
    ids = {"<|endoftext|>": g.eos_token_id, "<|startoftranscript|>": g.decoder_start_token_id}
    wrong = [
        f"; {t} is {tokenizer.backend.token_to_id(t)} there, {i} in the config"
        for t, i in ids.items()
        if tokenizer.backend.token_to_id(t) != i
    ]
    if size > vocab or wrong:
        raise ValueError(
            f"{path}: the checkpoint's vocabulary ({vocab} ids) does not match its tokenizer.json "
            f"({size} tokens{''.join(wrong)})"
        )


def load(path, *, dtype=None) -> Pipeline:
    """An HF whisper folder, a CTranslate2 Whisper folder, or an omni_jax conversion of either."""
    path, hf_config, config, params = load_checkpoint(path, MAPS, whisper, whisper.Config, dtype)
    config = whisper.Config.from_hf(hf_config, read_generation_config(path))
    tokenizer = Tokenizer.from_pretrained(path)
    check_tokenizer(path, tokenizer, config)
    g = config.generation
    return Pipeline(config, params, tokenizer, (g.eos_token_id,), g.pad_token_id)
