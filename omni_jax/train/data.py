"""Training data: a JSON Lines manifest -> static-shape batches through grain, each process reading its
slice of every global batch.

    manifest = read_manifest("train.jsonl", model, buckets=(128, 256))     # validated before training
    data = Batches(manifest, model, batch_size=8, grad_accum=2, seed=0)
    it = data.iterator()                      # grain iterator; it.get_state() goes into the checkpoint
    batch = next(it)                          # numpy, leaves (grad_accum, local rows, ...)

One example a line: `{"audio": "clip.wav" | ["a.wav", "b.wav"], "prompt": "...", "answer": "..."}` (paths
relative to the manifest; audio optional only if no line has any), or `{"messages": [...]}` in the chat
format the processors take, ending with the assistant turn to learn. Labels are -100 everywhere except the
final answer's tokens and its end-of-turn token: prompt, template scaffolding, audio placeholders and padding
never train. Every example is processed on its own (so a batch's content never depends on how it is split
over processes); rows are left padded to the smallest length bucket that holds the global batch's longest
example, and audio goes into fixed slots per example (AF3: 30-s windows; Thinker: clips padded to the
manifest's longest), so a run compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import grain
import numpy as np
import soundfile as sf

from omni_jax.audio import load_audio
from omni_jax.audio.features import HOP_LENGTH, SAMPLING_RATE
from omni_jax.families.audioflamingo3.processor import sound_token_count, split_windows
from omni_jax.models import aut_encoder
from omni_jax.train.loss import IGNORE_INDEX, keep_label_window
from omni_jax.train.models import TrainModel

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)


@dataclasses.dataclass(frozen=True)
class Example:
    where: str  # "manifest.jsonl line 3"
    messages: tuple  # chat turns (JSON-compatible), the last one the assistant's answer
    audio: tuple[Path, ...]
    tokens: int  # upper bound of the processed length
    answer_tokens: int  # tokens of the final answer (its labels, end of turn included, end the row)
    audio_units: int  # AF3: 30-s windows; Thinker: clips
    audio_frames: int  # longest clip's valid mel frames (upper bound)


@dataclasses.dataclass(frozen=True)
class Manifest:
    path: Path
    examples: tuple[Example, ...]
    buckets: tuple[int, ...]
    audio_slots: int  # audio units per example in a batch (0: a text-only manifest)
    audio_frames: int  # Thinker: padded frames of every clip

    def bucket(self, rows: list[int]) -> int:
        longest = max(self.examples[i].tokens for i in rows)
        return next(b for b in self.buckets if b >= longest)

    def label_window(self, rows: list[int], length: int) -> int:
        """Label columns a batch keeps: its rows' last positions that predict an answer token."""
        return window_for(max(self.examples[i].answer_tokens for i in rows) + 1, length, self.buckets)


# ---------------------------------------------------------------- manifest


def _fail(where: str, message: str):
    raise ValueError(f"{where}: {message}")


def _samples(path: Path, where: str) -> int:
    """Sample count at 16 kHz (upper bound) from the file header."""
    if not path.is_file():
        _fail(where, f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
        _fail(where, f"cannot read audio file {path}: {e}")
    if info.frames == 0:
        _fail(where, f"audio file {path} has no samples")
    return math.ceil(info.frames * SAMPLING_RATE / info.samplerate)


def _audio_blocks(content, base: Path, where: str) -> list[Path]:
    paths = []
    for block in [] if isinstance(content, str) else content:
        if block.get("type") == "audio":
            source = block.get("path", block.get("audio"))
            if not isinstance(source, str):
                _fail(where, "an audio block needs a 'path' (a file name relative to the manifest)")
            block["path"] = str((base / source).resolve())
            block.pop("audio", None)
            paths.append(Path(block["path"]))
    return paths


def _messages(record: Any, base: Path, audio_first: bool, where: str) -> tuple[list[dict], list[Path]]:
    """The chat turns of one manifest line and its audio paths (resolved against the manifest folder)."""
    if not isinstance(record, dict):
        _fail(where, f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        if unknown := sorted(set(record) - {"messages"}):
            _fail(where, f"unknown keys {unknown} next to 'messages'")
        messages = record["messages"]
        if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
            _fail(where, "'messages' must be a list of turns ending with the assistant's answer")
        paths = [p for m in messages for p in _audio_blocks(m.get("content"), base, where)]
        return messages, paths
    if unknown := sorted(set(record) - {"audio", "prompt", "answer"}):
        _fail(where, f"unknown keys {unknown}; expected 'audio', 'prompt', 'answer' (or 'messages')")
    for key in ("prompt", "answer"):
        if not isinstance(record.get(key), str):
            _fail(where, f"missing or non-string '{key}'")
    audio = record.get("audio", [])
    audio = [audio] if isinstance(audio, str) else audio
    if not isinstance(audio, list) or not all(isinstance(a, str) for a in audio):
        _fail(where, "'audio' must be a file name or a list of file names")
    paths = [(base / a).resolve() for a in audio]
    blocks = [{"type": "audio", "path": str(p)} for p in paths]
    text = [{"type": "text", "text": record["prompt"]}]
    user = blocks + text if audio_first else text + blocks
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "text", "text": record["answer"]}]},
    ], paths


def _audio_size(model: TrainModel, n_samples: int) -> tuple[int, int, int]:
    """(audio tokens, audio units, valid mel frames) of a clip of n_samples at 16 kHz: upper bounds with the
    processors' own formulas."""
    if model.family.audio_layout == "windows":
        config = model.processor.config
        windows = split_windows(np.empty(n_samples, np.uint8), config)
        frames = sum(min(math.ceil(len(w) / HOP_LENGTH), config.window // HOP_LENGTH) for w in windows)
        return int(sound_token_count(frames)), len(windows), frames
    frames = math.ceil(n_samples / HOP_LENGTH)
    return int(aut_encoder.audio_token_count(frames)), 1, frames


def _example(model: TrainModel, record: Any, base: Path, where: str) -> Example:
    messages, paths = _messages(record, base, model.family.audio_layout == "clips", where)
    if model.family.audio_layout == "windows" and len(paths) > 1:
        _fail(where, f"AudioFlamingo3 takes one audio per example, got {len(paths)}")
    try:
        text = render(model, messages)
    except Exception as e:
        _fail(where, f"the chat template cannot render this example: {e}")
    sizes = [_audio_size(model, _samples(p, where)) for p in paths]
    placeholder = _placeholder(model)
    n_text = len(model.processor.tokenizer.encode(text, add_special_tokens=_special(model, text)))
    tokens = n_text - len(paths) * len(model.processor.tokenizer.encode(placeholder, False))
    tokens += sum(s[0] for s in sizes)
    units, answer = sum(s[1] for s in sizes), len(_answer_ids(model, messages, text, where))
    frames = max((s[2] for s in sizes), default=0)
    return Example(where, tuple(messages), tuple(paths), tokens, answer, units, frames)


def read_manifest(path, model: TrainModel, buckets=DEFAULT_BUCKETS) -> Manifest:
    """Parse and check every line (answer present, audio files readable, length within the largest bucket)
    before any training; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest not found: {path}")
    buckets = tuple(sorted(int(b) for b in buckets))
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(where, f"not valid JSON ({e})")
        example = _example(model, record, path.parent, where)
        if example.tokens > buckets[-1]:
            _fail(where, f"{example.tokens} tokens exceed the largest length bucket {buckets[-1]}")
        examples.append(example)
    if not examples:
        raise ValueError(f"manifest {path} has no examples")
    with_audio = [bool(e.audio) for e in examples]
    if any(with_audio) and not all(with_audio):
        missing = next(e.where for e in examples if not e.audio)
        raise ValueError(f"{missing}: no audio, but other lines have some (a manifest is all audio or none)")
    frames = max(e.audio_frames for e in examples)
    config = model.config
    padded = aut_encoder.bucket_frames(config.audio, frames) if model.family.audio_layout == "clips" else 0
    return Manifest(path, tuple(examples), buckets, max(e.audio_units for e in examples), padded)


# ---------------------------------------------------------------- one example


def _placeholder(model: TrainModel) -> str:
    p = model.processor
    return p.config.audio_token if model.family.audio_layout == "windows" else p.audio_token


def _special(model: TrainModel, text: str) -> bool:
    """add_special_tokens as the processor's apply_chat_template decides it (not when the text has a BOS)."""
    bos = model.processor.tokenizer.special_tokens.get("bos_token")
    return not (bos and text.startswith(bos))


def render(model: TrainModel, messages) -> str:
    return model.processor.apply_chat_template([list(messages)])[0]


def _answer_ids(model: TrainModel, messages, text: str, where: str) -> list[int]:
    """The final answer's tokens: the rendered conversation past its rendered prompt."""
    p = model.processor
    prompt = p.apply_chat_template([list(messages[:-1])], add_generation_prompt=True)[0]
    if not text.startswith(prompt):
        _fail(where, "the rendered answer turn does not extend the rendered prompt")
    return p.tokenizer.encode(text[len(prompt) :], add_special_tokens=False)


def process(model: TrainModel, example: Example) -> dict[str, np.ndarray]:
    """One example through the family's processor: ids, mask and labels (1 t) plus its audio features; only
    the final answer and its end-of-turn token are labelled."""
    p = model.processor
    text = render(model, example.messages)
    answer = _answer_ids(model, example.messages, text, example.where)
    clips = [load_audio(a) for a in example.audio] or None
    out = p(text, clips, add_special_tokens=_special(model, text))
    ids = out["input_ids"][0]
    eos = p.tokenizer.token_id(p.tokenizer.special_tokens["eos_token"])
    ends = np.flatnonzero(ids == eos)
    if len(answer) == 0 or len(ends) == 0 or not np.array_equal(ids[len(ids) - len(answer) :], answer):
        _fail(example.where, "no answer tokens to train on (all labels would be masked)")
    first = len(ids) - len(answer)
    labels = np.full_like(ids, IGNORE_INDEX)
    labels[first : ends[-1] + 1] = ids[first : ends[-1] + 1]  # answer + end of turn, not the trailing "\n"
    if (labels != IGNORE_INDEX).sum() == 0:
        _fail(example.where, "no answer tokens to train on (all labels would be masked)")
    return out | {"labels": labels[None]}


# ---------------------------------------------------------------- collation


def _left_pad(a: np.ndarray, length: int, value) -> np.ndarray:
    return np.pad(a, ((0, 0), (length - a.shape[1], 0)), constant_values=value)


def _slots(parts: list[np.ndarray], slots: int, fill) -> np.ndarray:
    """Per-example arrays (n_i, ...) placed into `slots` rows each (the rest `fill`). -> (rows slots) ..."""
    shape = parts[0].shape[1:]
    out = np.full((len(parts) * slots, *shape), fill, parts[0].dtype)
    for i, part in enumerate(parts):
        out[i * slots : i * slots + len(part)] = part
    return out


AUDIO_FILL = {
    "input_features": 0.0,
    "key_lengths": 1,
    "audio_valid": False,
    "audio_lengths": 1,
    "audio_present": False,
}


def window_for(needed: int, length: int, buckets=DEFAULT_BUCKETS) -> int:
    """The smallest bucket of at least `needed` label columns, at most the row length."""
    return min(length, next((b for b in buckets if b >= needed), length))


def collate(
    model: TrainModel, manifest: Manifest, rows: list[dict], length: int, window: int
) -> dict[str, np.ndarray]:
    """Processed examples -> the family's batch arrays, rows left padded to `length`, audio in slots, the
    labels' last `window` columns (the rest never count)."""
    tok = model.processor.tokenizer
    pad_id = tok.token_id(tok.special_tokens["pad_token"])
    merged = {
        k: np.concatenate([_left_pad(r[k], length, fill) for r in rows]).astype(np.int32)
        for k, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX))
    }
    feature_keys = [k for k in rows[0] if k not in merged]  # input_features + its mask
    counts = [len(r["input_features"]) for r in rows] if feature_keys else []
    if manifest.audio_frames:  # clips: one frame count for every batch
        for r in rows:
            extra = manifest.audio_frames - r["input_features"].shape[2]
            r["input_features"] = np.pad(r["input_features"], ((0, 0), (0, 0), (0, extra)))
            r["feature_attention_mask"] = np.pad(r["feature_attention_mask"], ((0, 0), (0, extra)))
    for k in feature_keys:
        merged[k] = np.concatenate([r[k] for r in rows])
    batch = model.family.batch(model.config, merged)
    batch["labels"] = keep_label_window(batch["labels"], window)
    if not feature_keys:
        return batch
    ends = np.cumsum(counts)[:-1]
    for k in [k for k in batch if k in AUDIO_FILL]:
        batch[k] = _slots(np.split(batch[k], ends), manifest.audio_slots, AUDIO_FILL[k])
    if manifest.audio_frames:
        batch["input_features"] = batch["input_features"][..., : manifest.audio_frames]
    return batch


def check_targets(batch: dict[str, np.ndarray], where: str) -> None:
    """A batch must have at least one label to train on."""
    if not (batch["labels"] != IGNORE_INDEX).any():
        raise ValueError(f"{where}: every label of the batch is -100 (nothing to train on)")


def micro_batches(batch: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Leading axis (rows, or rows x audio slots) split into k micro-batches: (k, rows / k, ...)."""
    return {name: a.reshape(k, -1, *a.shape[1:]) for name, a in batch.items()}


# ---------------------------------------------------------------- grain


@dataclasses.dataclass(frozen=True)
class Batches:
    """Global batches of `batch_size` examples (shuffled per epoch from `seed`, repeated; or one ordered pass
    with shuffle=False, repeat=False); process `process_index` of `process_count` gets rows
    [p m / P, (p + 1) m / P) of each of the grad_accum micro-batches of m = batch_size / grad_accum rows."""

    manifest: Manifest
    model: TrainModel
    batch_size: int
    grad_accum: int = 1
    seed: int = 0
    process_index: int = 0
    process_count: int = 1
    shuffle: bool = True
    repeat: bool = True

    def __post_init__(self):
        m, rem = divmod(self.batch_size, self.grad_accum)
        if rem or m % self.process_count:
            raise ValueError(
                f"batch_size {self.batch_size} must split into grad_accum {self.grad_accum} micro-batches "
                f"whose rows divide over {self.process_count} processes"
            )
        if len(self.manifest.examples) < self.batch_size:
            raise ValueError(
                f"{self.manifest.path}: {len(self.manifest.examples)} examples, fewer than batch_size "
                f"{self.batch_size}"
            )

    def local_rows(self, rows: np.ndarray) -> list[int]:
        m = self.batch_size // self.grad_accum
        per = m // self.process_count
        start = self.process_index * per
        return [int(rows[i * m + start + j]) for i in range(self.grad_accum) for j in range(per)]

    def load(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Global batch indices -> this process's micro-batched arrays."""
        examples = self.manifest.examples
        processed = [process(self.model, examples[i]) for i in self.local_rows(rows)]
        length = self.manifest.bucket(list(rows))
        batch = collate(
            self.model, self.manifest, processed, length, self.manifest.label_window(list(rows), length)
        )
        check_targets(
            batch,
            f"{self.manifest.path} batch of lines {[examples[i].where.rsplit(' ', 1)[1] for i in rows]}",
        )
        return micro_batches(batch, self.grad_accum)

    def dataset(self) -> grain.MapDataset:
        ds = grain.MapDataset.range(len(self.manifest.examples))
        if self.shuffle:
            ds = ds.shuffle(seed=self.seed)
        if self.repeat:
            ds = ds.repeat()
        return ds.batch(self.batch_size, drop_remainder=True).map(self.load)

    def iterator(self, state: dict | None = None) -> grain.DatasetIterator:
        """A grain iterator (prefetching on threads), at `state` (from `get_state()`) when given."""
        it = iter(self.dataset().to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))
        if state is not None:
            it.set_state(state)
        return it
