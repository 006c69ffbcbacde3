"""Qwen3-Omni speech output: the Thinker's answer -> talker prompt -> Talker + code predictor -> Code2Wav,
as transformers' `Qwen3OmniMoeForConditionalGeneration.generate` (spec qwen3_omni_talker_code2wav.md D, A, B).

    config = SpeechConfig.from_hf(hf_config)
    prompt = talker_prompt(params, config, input_ids, mask, embeds, hidden, new_ids, "ethan", eos)
    tokens, frames = talk(params, config, prompt, max_new_tokens=4096)  # codes b G n-1
    waves = waveforms(params["code2wav"], config.code2wav, tokens, frames, eos)  # one 24-kHz array per row

`Talker` is the engine's StepModel for the talker: one step = the code predictor's 15 residual codebooks of
the frame just chosen (a `lax.scan` over its own G-slot cache) + the sum of the G group embeddings + the
trailing text (text_projection of the Thinker's embedding of one id) + one talker decode step. Talker step f
needs only the Thinker's ids 0..f (`trailing_ids`), so `TalkerRun` can start after the Thinker's first token
and advance, in on-device `lax.while_loop` runs, as far as the text so far allows (`talk` runs it to the
end at once). `WavStream` turns frames into audio packets with Code2Wav's streaming mode and reproduces
`chunked_decode`'s 300-frame schedule, so the packets join to the one-shot waveform.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
    trailing_ids: np.ndarray  # b k: thinker ids of the trailing text known so far (`trailing_ids`)
    text_pad: int  # tts_pad's thinker id, fed once the trailing text is used up


def talker_params(params: dict) -> dict:
    """The talker's parameters with the Thinker's token embedding table ("text_table"): the trailing text
    enters the talker through text_projection of it."""
    return {**params["talker"], "text_table": params["thinker"]["embed"]["embedding"]}


def text_embeds(params: dict, config: talker.TalkerConfig, ids: Any) -> jax.Array:
    """text_projection of the Thinker's token embeddings: ids ... -> ... d (params: `talker_params`)."""
    return talker.project(params["text_projection"], config, jnp.take(params["text_table"], ids, axis=0))


def trailing_ids(config: SpeechConfig, generated: Any, thinker_eos: tuple[int, ...], *, finished: bool):
    """Thinker ids of the trailing text (spec D.3.4) for the t ids generated so far (b t) -> b t-1: entry j
    is text_{j+1}; tts_eos at a row's first EOS j = e and, once the Thinker has `finished`, at the last entry;
    tts_pad past e. Entries never change as more ids come, so talker step f needs only ids 0..f."""
    gen = np.asarray(generated)
    ended = np.isin(gen, thinker_eos)
    first = np.where(ended.any(1), ended.argmax(1), gen.shape[1])[:, None]
    ids = gen[:, 1:].copy()
    if finished and ids.shape[1]:
        ids[:, -1] = config.token("tts_eos")
    j = np.arange(ids.shape[1])[None]
    ids = np.where(j == first, config.token("tts_eos"), ids)
    return np.where(j > first, config.token("tts_pad"), ids).astype(np.int32)


def talker_prompt(
    params: dict, config: SpeechConfig, input_ids: Any, attention_mask: Any, embeds: Any, hidden: Any,
    generated: Any, speaker: str, thinker_eos: tuple[int, ...], *, finished: bool = True,
) -> TalkerPrompt:  # fmt: skip
    """The talker's inputs as transformers builds them: user turns (placeholders through hidden_projection of
    the Thinker's `hidden` b l D, text through text_projection of the fused `embeds` b l D), the assistant
    header + codec control ids + speaker + first text token, and the trailing text of the `generated` ids
    b t (pad after a row's EOS; all T of them once the Thinker has `finished`, else those so far: the prompt
    needs only the first). `params` holds "thinker" and "talker"."""
    tc, tp = config.talker, params["talker"]
    ids, gen = np.asarray(input_ids), np.asarray(generated)
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    speaker_id = tc.speaker_id(speaker)
    (b, length), steps = ids.shape, gen.shape[1]
    if steps < (2 if finished else 1):
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
    codec_ids = [tc.codec_id(n) for n in ("nothink", "think_bos", "think_eos")]
    codec_ids += [speaker_id, tc.codec_id("pad"), tc.codec_id("bos")]
    embeds = _assemble(
        tp, tc, params["thinker"]["embed"]["embedding"], jnp.asarray(embeds), jnp.asarray(hidden),
        np.isin(ids, config.multimodal_ids), order, gen[:, :1],
        np.asarray([config.token(n) for n in ("tts_bos", "tts_pad")]), np.asarray(codec_ids), int(header[-1]),
    )  # fmt: skip
    return TalkerPrompt(
        embeds=embeds,
        attention_mask=np.concatenate(
            [np.arange(width)[None] >= (width - lengths)[:, None], np.ones((b, 9), bool)], 1
        ),
        input_ids=np.concatenate(
            [np.take_along_axis(ids, order, 1), np.full((b, 9), config.token("tts_pad"))], 1
        ),
        trailing_ids=trailing_ids(config, gen, thinker_eos, finished=finished),
        text_pad=config.token("tts_pad"),
    )


@functools.partial(jax.jit, static_argnums=(1, 10))
def _assemble(tp, tc, table, embeds, hidden, media, order, first, special, codec_ids, header):
    """The talker prompt embeddings: user part (b u d), then the assistant part (b 9 d). embeds, hidden: b l D
    over the prompt; first: b 1 the first generated ids."""

    def text(x):
        return talker.project(tp["text_projection"], tc, x)

    with jax.named_scope("talker_prompt"):
        full = jnp.where(media[..., None], talker.project(tp["hidden_projection"], tc, hidden), text(embeds))
        user = jnp.take_along_axis(full, order[..., None], axis=1)  # b u d
        answer = text(
            jnp.concatenate([embeds[:, header:], jnp.take(table, first, axis=0).astype(embeds.dtype)], 1)
        )
        bos, pad = text(jnp.take(table, special, axis=0))
        (b, _, d), fill = answer.shape, lambda v, n: jnp.broadcast_to(v, (b, n, d))
        text_part = jnp.concatenate([answer[:, :3], fill(pad, 4), fill(bos, 1), answer[:, 3:4]], 1)
        codec = jnp.concatenate([jnp.zeros((3, d), answer.dtype), talker.codec_embed(tp, codec_ids)])
    return jnp.concatenate([user, text_part + codec[None]], 1)


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
    text: jax.Array  # b S int32: thinker ids of the trailing text (slots past text_len unused)
    text_len: jax.Array  # () int32: trailing entries; later steps feed tts_pad
    step: jax.Array  # () int32: frames fed so far (transformers' generation_step)
    key: jax.Array  # the code predictor's key (step i draws with fold_in(key, i))
    codes: jax.Array  # b G int32: the frame the last step fed


class Prefill(NamedTuple):
    prompt: engine.Prompt  # bucketed embeddings
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class Talker:
    """The talker (omni_jax.models.talker) as an engine StepModel over `talker_params`; `predictor` is the
    code predictor's selection, `text_pad` tts_pad's thinker id, `text_slots` the trailing text's capacity."""

    config: talker.TalkerConfig
    predictor: Sampling
    text_pad: int
    text_slots: int

    def init_cache(self, params: dict, batch: int, length: int) -> TalkerState:
        c = self.config
        dtype = engine.param_dtype(params["model"])
        d = c.body.hidden_size
        return TalkerState(
            init_cache(c.body, batch, length, dtype), jnp.zeros((batch, d), dtype),
            jnp.zeros((batch, self.text_slots), jnp.int32), jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
            jax.random.PRNGKey(0), jnp.zeros((batch, c.num_code_groups), jnp.int32),
        )  # fmt: skip

    def prefill(self, params: dict, prompt: Prefill, state: TalkerState) -> engine.Step:
        inputs, start = prompt.prompt.inputs, prompt.prompt.start
        kv = dataclasses.replace(state.kv, start=start, index=jnp.zeros((), jnp.int32))
        out, kv = decoder.forward(params["model"], self.config.body, inputs, cache=kv, logits="none")
        kv = dataclasses.replace(kv, next_pos=(inputs.shape[1] - start).astype(jnp.float32))
        hidden = out.hidden[:, -1]
        step = jnp.zeros((), jnp.int32)
        state = dataclasses.replace(state, kv=kv, hidden=hidden, step=step, key=prompt.key)
        return engine.Step(talker.codec_logits(params, hidden), state, {})

    def step(self, params: dict, inputs: jax.Array, state: TalkerState) -> engine.Step:
        """inputs: b 1 group-0 codes of the frame to feed."""
        c0 = inputs[:, 0]
        key = jax.random.fold_in(state.key, state.step)
        codes, feedback = talker.predict_codes(params, self.config, state.hidden, c0, key, self.predictor)
        entry = state.text[:, jnp.minimum(state.step, self.text_slots - 1)]
        text = text_embeds(params, self.config, jnp.where(state.step < state.text_len, entry, self.text_pad))
        x = (feedback + text.astype(feedback.dtype))[:, None]
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
    ignore = jnp.asarray((~prompt.attention_mask).sum(1), jnp.int32)  # transformers' prompt_ignore_length
    return Prefill(bucketed, jax.random.fold_in(key, 1)), length, ignore, jax.random.fold_in(key, 0)


def _choose(logits, key, i, seen, done, ignore, sampling: Sampling, eos: int):
    """Step i's group-0 codes (EOS for finished rows); the penalty sees a row's codes from step ignore[b]."""
    token = jnp.where(done, eos, sample(logits, sampling, jax.random.fold_in(key, i), seen))
    if seen is not None:
        rows = jnp.arange(token.shape[0])
        seen = seen.at[rows, token].set(seen[rows, token] | (i >= ignore))
    return token, done | (token == eos), seen


class TalkCarry(NamedTuple):
    i: jax.Array  # () tokens chosen so far
    tokens: jax.Array  # b max_new group-0 codes (codec_eos past the end)
    frames: jax.Array  # b G max_new: frame i-1 completed by step i
    state: TalkerState
    done: jax.Array  # b
    seen: jax.Array | None  # b vocab, for the repetition penalty


@functools.partial(jax.jit, static_argnames=("model", "max_new", "sampling", "length"))
def _talk_start(model, params, prefill, ignore, key, *, max_new, sampling, length) -> TalkCarry:
    """The talker prefill and its group-0 codes (step 0)."""
    c = model.config
    eos, b = c.codec_id("eos"), prefill.prompt.inputs.shape[0]
    step = model.prefill(params, prefill, model.init_cache(params, b, length))
    seen = None if sampling.repetition_penalty == 1.0 else jnp.zeros((b, c.body.vocab_size), bool)
    token, done, seen = _choose(step.logits, key, 0, seen, jnp.zeros((b,), bool), ignore, sampling, eos)
    tokens = jnp.full((b, max_new), eos, jnp.int32).at[:, 0].set(token)
    frames = jnp.zeros((b, c.num_code_groups, max_new), jnp.int32)
    return TalkCarry(jnp.ones((), jnp.int32), tokens, frames, step.cache, done, seen)


@functools.partial(jax.jit, static_argnames=("model", "sampling"), donate_argnames="carry")
def _talk_run(model, params, carry, text, text_len, stop, ignore, key, *, sampling) -> TalkCarry:
    """Talker steps carry.i .. stop - 1 on device (fewer once every row has emitted codec_eos), with the
    trailing text ids `text` b S of which `text_len` are set."""
    eos = model.config.codec_id("eos")
    carry = carry._replace(state=dataclasses.replace(carry.state, text=text, text_len=text_len))

    def cond(c):
        return (c.i < stop) & ~c.done.all()

    def body(c):
        prev = jax.lax.dynamic_index_in_dim(c.tokens, c.i - 1, axis=1, keepdims=False)
        out = model.step(params, model.next_input(params, prev), c.state)
        frames = jax.lax.dynamic_update_slice_in_dim(c.frames, out.cache.codes[..., None], c.i - 1, axis=2)
        token, done, seen = _choose(out.logits, key, c.i, c.seen, c.done, ignore, sampling, eos)
        tokens = jax.lax.dynamic_update_slice_in_dim(c.tokens, token[:, None], c.i, axis=1)
        return TalkCarry(c.i + 1, tokens, frames, out.cache, done, seen)

    return jax.lax.while_loop(cond, body, carry)


class TalkerRun:
    """Talker generation on device, advanced in runs as the Thinker's text comes: the prefill needs only the
    Thinker's first id, step f its ids 0..f. The runs give the same tokens and frames as one run to the end.

        run = TalkerRun(params, config, prompt, max_new_tokens=4096, text_slots=T_max - 1)
        tokens, frames = run.advance(trailing_ids(...), finished=False, steps=4)  # new b n, b G n'
    """

    def __init__(
        self, params: dict, config: SpeechConfig, prompt: TalkerPrompt, *, max_new_tokens: int,
        settings: TalkerSettings = TalkerSettings(), seed: int = 0, text_slots: int | None = None,
    ):  # fmt: skip
        """params: the whole model's ("thinker" and "talker"); text_slots: at least the Thinker's final
        number of ids - 1 (default: the prompt's trailing text, i.e. a finished Thinker)."""
        tc = config.talker
        self.sampling, predictor = settings.samplings(tc)
        prefill, length, self.ignore, self.key = _prefill_args(tc, prompt, max_new_tokens, seed)
        slots = max(1, prompt.trailing_ids.shape[1] if text_slots is None else text_slots)
        self.model = Talker(tc, predictor, prompt.text_pad, slots)
        self.params, self.max_new = talker_params(params), max_new_tokens
        self.carry = _talk_start(
            self.model, self.params, prefill, self.ignore, self.key, max_new=max_new_tokens,
            sampling=self.sampling, length=length,
        )  # fmt: skip
        self.text = np.full((len(prompt.embeds), slots), prompt.text_pad, np.int32)
        self.read, self.finished = 0, bool(self.carry.done.all()) or max_new_tokens == 1

    def allowed(self, trailing: int, thinker_finished: bool) -> int:
        """Tokens the talker may have chosen once `trailing` entries are known."""
        return self.max_new if thinker_finished else min(self.max_new, trailing + 1)

    def advance(
        self, trailing: np.ndarray, *, finished: bool, steps: int
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Up to `steps` talker steps that the trailing text ids b k (`trailing_ids`; all of them once the
        Thinker has `finished`) determine -> the group-0 tokens b n chosen since the last call (the first
        call: from step 0) and the frames b G n' they completed."""
        k = trailing.shape[1]
        if k > self.text.shape[1]:
            raise ValueError(f"trailing text of {k} ids exceeds the talker's {self.text.shape[1]} slots")
        self.text[:, :k] = trailing
        i = int(self.carry.i)
        stop = min(self.allowed(k, finished), i + steps)
        if not self.finished and stop > i:
            self.carry = _talk_run(
                self.model, self.params, self.carry, jnp.asarray(self.text), jnp.int32(k), jnp.int32(stop),
                self.ignore, self.key, sampling=self.sampling,
            )  # fmt: skip
        end = int(self.carry.i)
        self.finished = end >= self.max_new or bool(self.carry.done.all())
        start, self.read = self.read, end
        tokens = np.asarray(self.carry.tokens)[:, start:end]
        return tokens, np.asarray(self.carry.frames)[:, :, max(start - 1, 0) : end - 1]


def talk(
    params: dict, config: SpeechConfig, prompt: TalkerPrompt, *, max_new_tokens: int,
    settings: TalkerSettings = TalkerSettings(), seed: int = 0, text_slots: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Talker generation on device: (group-0 tokens b n, frames b G n-1); n stops once every row has emitted
    codec_eos or at max_new_tokens; the last token never gets residual codes (transformers' rule). params:
    the whole model's ("thinker" and "talker")."""
    run = TalkerRun(
        params, config, prompt, max_new_tokens=max_new_tokens, settings=settings, seed=seed,
        text_slots=text_slots,
    )  # fmt: skip
    return run.advance(prompt.trailing_ids, finished=True, steps=max_new_tokens)


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
    out = system.forward(params, thinker_config, inputs, hidden_layers=(0, layer), logits="none")
    return out.hidden_states[0], out.hidden_states[layer]


def prompt_for(
    params: dict, thinker_config, config: SpeechConfig, inputs: dict, new_ids: np.ndarray, *, speaker: str,
    thinker_eos: tuple[int, ...], finished: bool = True,
) -> TalkerPrompt:  # fmt: skip
    """The talker prompt of processor `inputs` and the Thinker's new ids (b t, as transformers gives them;
    the first one suffices while it has not `finished`)."""
    config.talker.speaker_id(speaker)  # an unknown speaker fails before the Thinker forward
    embeds, hidden = thinker_states(params, thinker_config, inputs)
    return talker_prompt(
        params, config, inputs["input_ids"], inputs.get("attention_mask"), embeds, hidden, new_ids, speaker,
        thinker_eos, finished=finished,
    )  # fmt: skip
