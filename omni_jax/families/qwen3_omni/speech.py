"""Qwen3-Omni speech output: the Thinker's answer -> talker prompt -> Talker + code predictor -> Code2Wav,
as transformers' `Qwen3OmniMoeForConditionalGeneration.generate` (spec qwen3_omni_talker_code2wav.md D, A, B).

    config = SpeechConfig.from_hf(hf_config)
    prompt = talker_prompt(params, config, input_ids, mask, embeds, hidden, new_ids, "ethan", eos)
    tokens, frames = talk(params["talker"], config.talker, prompt, max_new_tokens=4096)  # codes b G n-1
    waves = waveforms(params["code2wav"], config.code2wav, tokens, frames, eos)  # one 24-kHz array per row

`Talker` is the engine's StepModel for the talker: one step = the code predictor's 15 residual codebooks of
the frame just chosen (a `lax.scan` over its own G-slot cache) + the sum of the G group embeddings + the
trailing text + one talker decode step. `talk` runs it on device (one `lax.while_loop`), `talk_stream` one
jitted step at a time. `WavStream` turns frames into audio packets with Code2Wav's streaming mode and
reproduces `chunked_decode`'s 300-frame schedule, so the packets join to the one-shot waveform.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.families import base
from omni_jax.families.qwen3_omni import system
from omni_jax.inference import engine
from omni_jax.inference.sampling import Sampling, sample
from omni_jax.models import code2wav, decoder, talker
from omni_jax.nn.cache import KVCache, init_cache

CHUNK, CONTEXT = 300, 25  # transformers' chunked_decode schedule (generate always uses it)
_TOP_IDS = {
    "im_start": ("im_start_token_id", 151644),
    "system": ("system_token_id", 8948),
    "user": ("user_token_id", 872),
    "assistant": ("assistant_token_id", 77091),
    "tts_pad": ("tts_pad_token_id", 151671),
    "tts_bos": ("tts_bos_token_id", 151672),
    "tts_eos": ("tts_eos_token_id", 151673),
}


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
    talker: talker.TalkerConfig
    code2wav: code2wav.Config
    token_ids: tuple[tuple[str, int], ...]  # _TOP_IDS names -> thinker token id
    multimodal_ids: tuple[int, ...]  # thinker audio / image / video placeholder ids

    @classmethod
    def from_hf(cls, hf: Any) -> SpeechConfig:
        """From a Qwen3OmniMoeConfig (object or dict) with talker_config and code2wav_config."""
        c = hf if isinstance(hf, dict) else hf.to_dict()
        missing = [k for k in ("talker_config", "code2wav_config") if not c.get(k)]
        if missing or "text_config" not in c["talker_config"]:
            raise ValueError(f"config has no talker / code2wav configs ({missing or ['talker text_config']})")
        thinker = c.get("thinker_config", {})
        media = {"audio_token_id": 151675, "image_token_id": 151655, "video_token_id": 151656}
        return cls(
            talker=talker.TalkerConfig.from_hf(c["talker_config"]),
            code2wav=code2wav.Config.from_hf(c["code2wav_config"]),
            token_ids=tuple((n, int(c.get(k, d))) for n, (k, d) in _TOP_IDS.items()),
            multimodal_ids=tuple(
                int(thinker.get(k, d)) for k, d in zip(media, (151675, 151655, 151656), strict=True)
            ),
        )

    def token(self, name: str) -> int:
        return dict(self.token_ids)[name]


@dataclasses.dataclass(frozen=True)
class TalkerSettings:
    """transformers' talker_* generate arguments (its defaults); the code predictor mirrors do_sample with
    top-k 50, top-p 0.8 and no temperature."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05

    def samplings(self, config: talker.TalkerConfig) -> tuple[Sampling, Sampling]:
        """(talker, code predictor) Sampling."""
        if not self.do_sample:
            return Sampling(
                repetition_penalty=self.repetition_penalty, suppress_tokens=config.suppress_tokens
            ), Sampling()
        return (
            Sampling(
                self.temperature, self.top_k, self.top_p, self.repetition_penalty, config.suppress_tokens
            ),
            Sampling(1.0, 50, 0.8),
        )


# ---------------------------------------------------------------- talker prompt (spec D.3)


class TalkerPrompt(NamedTuple):
    embeds: jax.Array  # b u+9 d: user turns, then the 9-position assistant part
    attention_mask: np.ndarray  # b u+9 bool (user parts right-aligned)
    input_ids: np.ndarray  # b u+9: user ids then tts_pad (3-D positions only)
    trailing: jax.Array  # b T-1 d: text_1 .. and tts_eos / tts_pad, one per decode step
    pad: jax.Array  # d: tts_pad_embed, fed once the trailing text is used up


def talker_prompt(
    params: dict, config: SpeechConfig, input_ids: Any, attention_mask: Any, embeds: Any, hidden: Any,
    generated: Any, speaker: str, thinker_eos: tuple[int, ...],
) -> TalkerPrompt:  # fmt: skip
    """The talker's inputs as transformers builds them: user turns (placeholders through hidden_projection of
    the Thinker's `hidden` b l D, text through text_projection of the fused `embeds` b l D), the assistant
    header + codec control ids + speaker + first text token, and the trailing text of the `generated` ids
    b T (pad after a row's EOS) with its batch fix-up. `params` holds "thinker" and "talker"."""
    tc, tp = config.talker, params["talker"]
    ids, gen = np.asarray(input_ids), np.asarray(generated)
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    speaker_id = tc.speaker_id(speaker)
    (b, length), steps = ids.shape, gen.shape[1]
    if steps < 2:
        raise ValueError(f"the thinker produced {steps} token(s); speech needs at least 2 (text and EOS)")

    positions = np.arange(length)
    last_start = np.maximum.accumulate(np.where(ids == config.token("im_start"), positions, -1), 1)
    role = np.take_along_axis(ids, np.minimum(last_start.clip(0) + 1, length - 1), 1)
    user = (role == config.token("user")) & mask
    lengths, width = user.sum(1), int(user.sum(1).max())
    if width == 0:
        raise ValueError("the prompt has no user turn: the talker speaks in reply to user turns")
    order = np.argsort(np.where(user, length + positions, positions), axis=1)[:, -width:]  # user rows, right
    header = np.flatnonzero(
        (ids[0, :-1] == config.token("im_start")) & (ids[0, 1:] == config.token("assistant"))
    )
    if not len(header):
        raise ValueError("input_ids have no '<|im_start|>assistant' header (add_generation_prompt=True)")
    ended = np.isin(gen, thinker_eos)
    codec_ids = [tc.codec_id(n) for n in ("nothink", "think_bos", "think_eos")]
    codec_ids += [speaker_id, tc.codec_id("pad"), tc.codec_id("bos")]
    embeds, trailing, pad = _assemble(
        tp, tc, params["thinker"]["embed"]["embedding"], jnp.asarray(embeds), jnp.asarray(hidden),
        np.isin(ids, config.multimodal_ids), order, gen[:, : steps - 1],
        np.asarray([config.token(n) for n in ("tts_bos", "tts_eos", "tts_pad")]), np.asarray(codec_ids),
        np.where(ended.any(1), ended.argmax(1), steps), int(header[-1]),
    )  # fmt: skip
    return TalkerPrompt(
        embeds=embeds,
        attention_mask=np.concatenate(
            [np.arange(width)[None] >= (width - lengths)[:, None], np.ones((b, 9), bool)], 1
        ),
        input_ids=np.concatenate(
            [np.take_along_axis(ids, order, 1), np.full((b, 9), config.token("tts_pad"))], 1
        ),
        trailing=trailing,
        pad=pad,
    )


@functools.partial(jax.jit, static_argnums=(1, 11))
def _assemble(tp, tc, table, embeds, hidden, media, order, new, special, codec_ids, first_eos, header):
    """The talker prompt's arrays: user part (b u d), assistant part (b 9 d), trailing text (b T-1 d) and
    tts_pad_embed (d). embeds, hidden: b l D over the prompt; new: b T-1 generated ids fed to the Thinker."""

    def text(x):
        return talker.project(tp["text_projection"], tc, x)

    with jax.named_scope("talker_prompt"):
        full = jnp.where(media[..., None], talker.project(tp["hidden_projection"], tc, hidden), text(embeds))
        user = jnp.take_along_axis(full, order[..., None], axis=1)  # b u d
        answer = text(
            jnp.concatenate([embeds[:, header:], jnp.take(table, new, axis=0).astype(embeds.dtype)], 1)
        )
        bos, eos, pad = text(jnp.take(table, special, axis=0))
        (b, _, d), fill = answer.shape, lambda v, n: jnp.broadcast_to(v, (b, n, d))
        text_part = jnp.concatenate([answer[:, :3], fill(pad, 4), fill(bos, 1), answer[:, 3:4]], 1)
        codec = jnp.concatenate([jnp.zeros((3, d), answer.dtype), talker.codec_embed(tp, codec_ids)])
        trailing = jnp.concatenate([answer[:, 4:], fill(eos, 1)], 1)  # b T-1 d
        j = jnp.arange(trailing.shape[1])[None, :, None]
        first_eos = first_eos[:, None, None]
        trailing = jnp.where(j > first_eos, pad, jnp.where(j == first_eos, eos, trailing))
    return jnp.concatenate([user, text_part + codec[None]], 1), trailing, pad


# ---------------------------------------------------------------- the Talker as a StepModel


def decode_layout(params: dict, config: talker.TalkerConfig) -> dict:
    """The talker's parameters with its two decoders in the backend's decode layout (families.base)."""
    predictor = params["code_predictor"]
    return {
        **params,
        "model": base.decode_layout(params["model"], config.body),
        "code_predictor": {**predictor, "model": base.decode_layout(predictor["model"], config.predictor)},
    }


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TalkerState:
    kv: KVCache
    hidden: jax.Array  # b d: final-normed hidden of the last position
    trailing: jax.Array  # b n d
    pad: jax.Array  # d
    step: jax.Array  # () int32: frames fed so far (transformers' generation_step)
    key: jax.Array  # the code predictor's key (step i draws with fold_in(key, i))
    codes: jax.Array  # b G int32: the frame the last step fed


class Prefill(NamedTuple):
    prompt: engine.Prompt  # bucketed embeddings
    trailing: jax.Array
    pad: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class Talker:
    """The talker (omni_jax.models.talker) as an engine StepModel; `predictor` is the code predictor's
    selection."""

    config: talker.TalkerConfig
    predictor: Sampling = Sampling()

    def init_cache(self, params: dict, batch: int, length: int) -> TalkerState:
        c = self.config
        dtype = engine.param_dtype(params["model"])
        d = c.body.hidden_size
        return TalkerState(
            init_cache(c.body, batch, length, dtype), jnp.zeros((batch, d), dtype),
            jnp.zeros((batch, 0, d), dtype), jnp.zeros((d,), dtype), jnp.zeros((), jnp.int32),
            jax.random.PRNGKey(0), jnp.zeros((batch, c.num_code_groups), jnp.int32),
        )  # fmt: skip

    def prefill(self, params: dict, prompt: Prefill, state: TalkerState) -> engine.Step:
        inputs, start = prompt.prompt.inputs, prompt.prompt.start
        kv = dataclasses.replace(state.kv, start=start, index=jnp.zeros((), jnp.int32))
        out, kv = decoder.forward(params["model"], self.config.body, inputs, cache=kv, logits="none")
        kv = dataclasses.replace(kv, next_pos=(inputs.shape[1] - start).astype(jnp.float32))
        hidden = out.hidden[:, -1]
        state = dataclasses.replace(
            state, kv=kv, hidden=hidden, trailing=prompt.trailing.astype(hidden.dtype),
            pad=prompt.pad.astype(hidden.dtype), step=jnp.zeros((), jnp.int32), key=prompt.key,
        )  # fmt: skip
        return engine.Step(talker.codec_logits(params, hidden), state, {})

    def step(self, params: dict, inputs: jax.Array, state: TalkerState) -> engine.Step:
        """inputs: b 1 group-0 codes of the frame to feed."""
        c0 = inputs[:, 0]
        key = jax.random.fold_in(state.key, state.step)
        codes, feedback = talker.predict_codes(params, self.config, state.hidden, c0, key, self.predictor)
        n = state.trailing.shape[1]
        text = state.trailing[:, jnp.minimum(state.step, max(n - 1, 0))] if n else state.pad[None]
        text = jnp.where(state.step < n, text, state.pad)
        x = (feedback + text)[:, None]
        out, kv = decoder.forward(
            params["model"], self.config.body, x, cache=state.kv, positions=state.kv.next_pos[:, None],
            logits="none",
        )  # fmt: skip
        kv = dataclasses.replace(kv, next_pos=kv.next_pos + 1)
        hidden = out.hidden[:, -1]
        state = dataclasses.replace(
            state, kv=kv, hidden=hidden, step=state.step + 1, codes=jnp.concatenate([c0[:, None], codes], 1)
        )
        return engine.Step(talker.codec_logits(params, hidden), state, {})

    def next_input(self, params: dict, tokens: jax.Array) -> jax.Array:
        return tokens[:, None]


def _prefill_args(config: talker.TalkerConfig, prompt: TalkerPrompt, max_new_tokens: int, seed: int):
    """(bucketed Prefill, cache length, per-row left padding the repetition penalty skips)."""
    if max_new_tokens < 1:
        raise ValueError(f"talker_max_new_tokens must be >= 1, got {max_new_tokens}")
    t = prompt.embeds.shape[1]
    length = engine.bucket(t, 1 << 62) + max_new_tokens
    bucketed = engine.prepare(
        config.body, prompt.embeds, prompt.attention_mask, None, None, length - max_new_tokens
    )
    key = jax.random.PRNGKey(seed)
    prefill = Prefill(bucketed, prompt.trailing, prompt.pad, jax.random.fold_in(key, 1))
    ignore = jnp.asarray((~prompt.attention_mask).sum(1), jnp.int32)  # transformers' prompt_ignore_length
    return prefill, length, ignore, jax.random.fold_in(key, 0)


def _choose(logits, key, i, seen, done, ignore, sampling: Sampling, eos: int):
    """Step i's group-0 codes (EOS for finished rows); the penalty sees a row's codes from step ignore[b]."""
    token = jnp.where(done, eos, sample(logits, sampling, jax.random.fold_in(key, i), seen))
    if seen is not None:
        rows = jnp.arange(token.shape[0])
        seen = seen.at[rows, token].set(seen[rows, token] | (i >= ignore))
    return token, done | (token == eos), seen


_choose_jit = jax.jit(_choose, static_argnums=(6, 7))


def _seen(config: talker.TalkerConfig, sampling: Sampling, batch: int):
    return None if sampling.repetition_penalty == 1.0 else jnp.zeros((batch, config.body.vocab_size), bool)


@functools.partial(jax.jit, static_argnames=("model", "max_new", "sampling", "length"))
def _talk(model, params, prefill, ignore, key, *, max_new, sampling, length):
    c = model.config
    eos, b = c.codec_id("eos"), prefill.prompt.inputs.shape[0]
    step = model.prefill(params, prefill, model.init_cache(params, b, length))
    token, done, seen = _choose(
        step.logits, key, 0, _seen(c, sampling, b), jnp.zeros((b,), bool), ignore, sampling, eos
    )
    tokens = jnp.full((b, max_new), eos, jnp.int32).at[:, 0].set(token)
    frames = jnp.zeros((b, c.num_code_groups, max_new), jnp.int32)

    def cond(carry):
        return (carry[0] < max_new) & ~carry[4].all()

    def body(carry):
        i, tokens, frames, state, done, seen = carry
        prev = jax.lax.dynamic_index_in_dim(tokens, i - 1, axis=1, keepdims=False)
        out = model.step(params, model.next_input(params, prev), state)
        frames = jax.lax.dynamic_update_slice_in_dim(frames, out.cache.codes[..., None], i - 1, axis=2)
        token, done, seen = _choose(out.logits, key, i, seen, done, ignore, sampling, eos)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], i, axis=1)
        return i + 1, tokens, frames, out.cache, done, seen

    i, tokens, frames, *_ = jax.lax.while_loop(
        cond, body, (jnp.ones((), jnp.int32), tokens, frames, step.cache, done, seen)
    )
    return i, tokens, frames


def talk(
    params: dict, config: talker.TalkerConfig, prompt: TalkerPrompt, *, max_new_tokens: int,
    settings: TalkerSettings = TalkerSettings(), seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Talker generation on device: (group-0 tokens b n, frames b G n-1); n stops once every row has emitted
    codec_eos or at max_new_tokens; the last token never gets residual codes (transformers' rule)."""
    sampling, predictor = settings.samplings(config)
    prefill, length, ignore, key = _prefill_args(config, prompt, max_new_tokens, seed)
    n, tokens, frames = _talk(
        Talker(config, predictor),
        params,
        prefill,
        ignore,
        key,
        max_new=max_new_tokens,
        sampling=sampling,
        length=length,
    )
    n = int(n)
    return np.asarray(tokens)[:, :n], np.asarray(frames)[:, :, : n - 1]


def talk_stream(
    params: dict, config: talker.TalkerConfig, prompt: TalkerPrompt, *, max_new_tokens: int,
    settings: TalkerSettings = TalkerSettings(), seed: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:  # fmt: skip
    """Each step's (group-0 tokens b, the frame b G it completed or None at step 0), one jitted step at a
    time; the same tokens and frames as `talk`."""
    sampling, predictor = settings.samplings(config)
    prefill, length, ignore, key = _prefill_args(config, prompt, max_new_tokens, seed)
    model = Talker(config, predictor)
    b, eos = prompt.embeds.shape[0], config.codec_id("eos")
    step = engine.run_prefill(model, params, prefill, model.init_cache(params, b, length))
    seen, done = _seen(config, sampling, b), jnp.zeros((b,), bool)
    frame = None
    for i in range(max_new_tokens):
        token, done, seen = _choose_jit(step.logits, key, i, seen, done, ignore, sampling, eos)
        yield np.asarray(token), frame
        if bool(done.all()) or i == max_new_tokens - 1:
            return
        step = engine.run_step(model, params, model.next_input(params, token), step.cache)
        frame = np.asarray(step.cache.codes)


# ---------------------------------------------------------------- waveform (spec D.5)


def frame_lengths(tokens: np.ndarray, frames: np.ndarray, eos: int) -> np.ndarray:
    """Valid frames per row: up to its first codec_eos among the first n frames' tokens."""
    n = frames.shape[-1]
    ended = tokens[:, :n] == eos
    return np.where(ended.any(1), ended.argmax(1), n)


def wave_length(config: code2wav.Config, frames: int) -> int:
    """Samples `chunked_decode` gives for `frames` frames (a row's share of a batch decode)."""
    lost = config.total_upsample * CHUNK - code2wav.output_length(config, CHUNK)
    return frames * config.total_upsample - lost * math.ceil(frames / CHUNK)


def waveforms(
    params: dict, config: code2wav.Config, tokens: np.ndarray, frames: np.ndarray, eos: int
) -> list[np.ndarray]:
    """24-kHz waveform per row: frames past a row's codec_eos zeroed, the batch chunk-decoded (300 frames,
    25 of context) and each row cut to its length, as transformers. The frames are zero-padded to a bucket
    within their last chunk (fewer compilations): kept samples never depend on later frames."""
    lengths = frame_lengths(tokens, frames, eos)
    if frames.shape[-1] == 0:
        return [np.zeros((0,), np.float32) for _ in lengths]
    n = frames.shape[-1]
    frames = np.where(np.arange(n) < lengths[:, None, None], frames, 0)
    padded = engine.bucket(n, -(-n // CHUNK) * CHUNK)  # zero frames after the end change no kept sample
    frames = np.pad(frames, ((0, 0), (0, 0), (0, padded - n)))
    wav = np.asarray(code2wav.chunked_decode(params, config, frames, CHUNK, CONTEXT))
    return [row[: wave_length(config, int(n))] for row, n in zip(wav, lengths, strict=True)]


class WavStream:
    """Code2Wav on frames as they come, `packet` frames per step (the first packet may be smaller), with
    chunked_decode's schedule: a fresh stream every 300 frames primed with the 25 previous ones, whose
    samples are dropped. The chunks join to `waveforms` of all frames fed, row by row."""

    def __init__(
        self,
        params: dict,
        config: code2wav.Config,
        batch: int,
        *,
        packet: int,
        first_packet: int | None = None,
    ):
        if packet < 1 or (first_packet is not None and first_packet < 1):
            raise ValueError(
                f"packet sizes must be >= 1 frame, got packet={packet}, first_packet={first_packet}"
            )
        self.params, self.config, self.batch = params, config, batch
        self.packet, self.first = packet, packet if first_packet is None else first_packet
        self.frames: list[np.ndarray] = []  # every frame fed: b q
        self.pending = 0  # frames not decoded yet
        self.chunk_start, self.drop, self.state = 0, 0, None
        self.limit = np.full(batch, np.iinfo(np.int64).max)  # samples each row may still emit in total
        self.emitted = np.zeros(batch, np.int64)

    def push(self, frame: np.ndarray) -> list[np.ndarray] | None:
        """Add one frame (b q); the packet's samples per row once `packet` frames are waiting."""
        self.frames.append(np.asarray(frame, np.int32))
        self.pending += 1
        size = self.first if len(self.frames) == self.pending else self.packet
        return self._decode() if self.pending >= size or self._at_chunk_end() else None

    def end_row(self, row: int, frames: int) -> None:
        """Row `row` reached codec_eos: it keeps the samples of its first `frames` frames only."""
        self.limit[row] = wave_length(self.config, frames)

    def flush(self) -> list[np.ndarray] | None:
        return self._decode() if self.pending else None

    def _at_chunk_end(self) -> bool:
        return len(self.frames) - self.chunk_start >= CHUNK

    def _decode(self) -> list[np.ndarray]:
        out = []
        while self.pending:
            total = len(self.frames)
            if self.state is None:  # a new chunk: prime with up to 25 frames of context
                context = min(CONTEXT, self.chunk_start)
                self.state = code2wav.stream_init(
                    self.config, self.batch, self.params["code_embedding"].dtype
                )
                self.drop = context * self.config.total_upsample
                lead = self.frames[self.chunk_start - context : self.chunk_start]
            else:
                lead = []
            end = min(total, self.chunk_start + CHUNK)
            new = self.frames[total - self.pending : end]
            codes = np.stack(lead + new, axis=-1)  # b q m
            codes = np.where(codes < self.config.codebook_size, codes, 0)
            self.state, wav = code2wav.stream_step(self.params, self.config, self.state, codes)
            wav = np.asarray(wav)
            skip = min(self.drop, wav.shape[1])
            self.drop -= skip
            out.append(wav[:, skip:])
            self.pending -= len(new)
            if end - self.chunk_start >= CHUNK:  # chunk complete: its look-ahead samples are never emitted
                self.chunk_start, self.state = end, None
        wav = np.concatenate(out, axis=1)
        rows = []
        for r in range(self.batch):
            keep = int(max(0, min(wav.shape[1], self.limit[r] - self.emitted[r])))
            rows.append(wav[r, :keep])
            self.emitted[r] += keep
        return rows


# ---------------------------------------------------------------- the whole chain


def thinker_states(params: dict, thinker_config, inputs: dict) -> tuple[jax.Array, jax.Array]:
    """The Thinker's fused input embeddings and its `accept_hidden_layer` output over the prompt (b l D)."""
    layer = system.talker_layers(thinker_config)[1]
    out = system.forward(params, thinker_config, inputs, hidden_layers=(0, layer))
    return out.hidden_states[0], out.hidden_states[layer]


def prompt_for(
    params: dict, thinker_config, config: SpeechConfig, inputs: dict, new_ids: np.ndarray, *, speaker: str,
    thinker_eos: tuple[int, ...],
) -> TalkerPrompt:  # fmt: skip
    """The talker prompt of processor `inputs` and the Thinker's new ids (b T, as transformers gives them)."""
    config.talker.speaker_id(speaker)  # an unknown speaker fails before the Thinker forward
    embeds, hidden = thinker_states(params, thinker_config, inputs)
    return talker_prompt(
        params, config, inputs["input_ids"], inputs.get("attention_mask"), embeds, hidden, new_ids, speaker,
        thinker_eos,
    )  # fmt: skip
