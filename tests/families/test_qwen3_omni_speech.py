"""Qwen3-Omni speech output against transformers (configs/tiny-qwen3-omni.json: release token ids, codec ids,
16 codebooks and upsampling rates; float32, CPU): the talker prompt, the whole greedy chain (text tokens, all
16 codebooks, waveform), the pipeline's generate and stream, sampling, the CLI and bad input.

Two clips of 2.5 s and 1.25 s: greedy, row 0 speaks up to the token limit and row 1 reaches codec_eos. The
tests share shapes (batch 2, or row 0 alone, which the CLI reproduces) so that few programs compile.
"""

import copy
import json
from importlib import resources
from unittest import mock

import numpy as np
import pytest
import soundfile as sf
import torch

from omni_jax import parity
from omni_jax.audio import load_audio, save_audio
from omni_jax.cli import generate as generate_cli
from omni_jax.families.qwen3_omni import parity as omni_parity
from omni_jax.families.qwen3_omni import pipeline, speech
from omni_jax.models import code2wav
from omni_jax.testing.checkpoints import tiny_omni_model
from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

NEW, TALKER = 10, 17  # thinker and talker token limits (row 0 speaks 16 frames)
SPEECH = str(resources.files("omni_jax") / "assets" / "speech.wav")


@pytest.fixture(scope="module")
def model():
    return tiny_omni_model()


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("omni") / "tiny"
    model.save_pretrained(path)
    save_tokenizer_files(path, "qwen3_omni_moe")
    return path


@pytest.fixture(scope="module")
def pipe(folder):
    return pipeline.load(folder)


@pytest.fixture(scope="module")
def clips():
    speech_clip = load_audio(SPEECH)
    return [speech_clip[:40_000], speech_clip[:20_000]]


@pytest.fixture(scope="module")
def inputs(pipe, clips):
    return pipe.prepare(clips, ["What is said?", None])


def row(inputs, i):
    return {k: v[i : i + 1] for k, v in inputs.items()}


def torch_talker_prompt(model, inputs):
    """transformers' talker inputs (embeds, mask, ids, trailing text) and the thinker's new ids."""
    seen = {}
    thinker_generate = model.thinker.generate

    def thinker(**kw):
        seen["thinker"] = out = thinker_generate(**kw)
        return out

    def talker(**kw):
        seen.update(kw)
        raise StopIteration  # the prompt is all we need

    given = {k: torch.as_tensor(v) for k, v in inputs.items()}
    with (
        torch.no_grad(),
        mock.patch.object(model.thinker, "generate", thinker),
        mock.patch.object(model.talker, "generate", talker),
        pytest.raises(StopIteration),
    ):
        model.generate(**given, thinker_max_new_tokens=NEW, thinker_do_sample=False, speaker="Aiden")
    new = seen["thinker"].sequences[:, given["input_ids"].shape[1] :].numpy()
    return seen, new


@pytest.mark.parametrize("case", ["one turn", "multi-turn with system", "batch of 2"])
def test_talker_prompt_matches_transformers(model, pipe, clips, case):
    """User turns only (system and earlier assistant turns dropped), the 9-position assistant part, trailing
    text with the batch fix-up: embeddings within 1e-5, masks and ids equal."""
    if case == "batch of 2":
        inputs = pipe.prepare(clips, ["What is said?", None])
    else:
        turns = [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": clips[0]}, {"type": "text", "text": "Hi"}],
            }
        ]
        if case.startswith("multi"):
            turns = [
                {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
                *turns,
                {"role": "assistant", "content": [{"type": "text", "text": "Thank you."}]},
                {"role": "user", "content": [{"type": "text", "text": "What is in this audio?"}]},
            ]
        inputs = pipe.processor.apply_chat_template(
            [turns], tokenize=True, add_generation_prompt=True, return_dict=True
        )
    ref, new = torch_talker_prompt(model, inputs)
    prefill = ref["thinker"].hidden_states[0]  # this stage alone: the Thinker's states are transformers'
    embeds, hidden = (prefill[i].numpy() for i in (0, pipe.config.accept_hidden_layer))
    ours = speech.talker_prompt(
        pipe.params, pipe.speech, inputs["input_ids"], inputs["attention_mask"], embeds, hidden, new, "aiden",
        pipe.eos_ids,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(ours.embeds), ref["inputs_embeds"].numpy(), atol=1e-5)
    params, config = speech.talker_params(pipe.params), pipe.speech.talker
    trailing = speech.text_embeds(params, config, ours.trailing_ids)
    np.testing.assert_allclose(np.asarray(trailing), ref["trailing_text_hidden"].numpy(), atol=1e-5)
    pad = speech.text_embeds(params, config, ours.text_pad)
    np.testing.assert_allclose(np.asarray(pad), ref["tts_pad_embed"][0, 0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(ours.attention_mask, ref["attention_mask"].numpy().astype(bool))
    np.testing.assert_array_equal(ours.input_ids, ref["talker_input_ids"].numpy())
    if case == "batch of 2":
        assert not ours.attention_mask.all()  # rows of different user lengths
    for t in range(1, new.shape[1]):  # the text so far fixes the first t - 1 entries (early start)
        early = speech.trailing_ids(pipe.speech, new[:, :t], pipe.eos_ids, finished=False)
        np.testing.assert_array_equal(early, ours.trailing_ids[:, : t - 1])


@pytest.mark.parametrize("rows", [(0,), (0, 1)])
def test_compare_generate_speech(model, inputs, rows):
    """Text tokens and all 16 codebooks identical to transformers, waveform SNR >= 80 dB."""
    batch = {k: torch.as_tensor(v[list(rows)]) for k, v in inputs.items()}
    result = parity.compare_generate(
        model, batch.pop("input_ids"), batch.pop("attention_mask"), NEW, return_audio=True, speaker="Ethan",
        talker_max_new_tokens=TALKER, **batch,
    )  # fmt: skip
    assert result.ok, str(result)
    assert result.tokens_equal and result.codes_equal and result.waveform_snr_db >= 80


@pytest.fixture(scope="module")
def spoken(pipe, inputs):
    return pipe.generate(inputs, max_new_tokens=NEW, return_audio=True, talker_do_sample=False,
                         talker_max_new_tokens=TALKER)  # fmt: skip


def test_generate_returns_text_and_24khz_speech_per_row(model, pipe, inputs, spoken):
    """Row 0 runs to the talker's limit (15 frames), row 1 stops at codec_eos; waveforms trimmed per row and
    equal to transformers' (its batch generate)."""
    assert spoken.sample_rate == 24000
    assert [c.shape for c in spoken.codes] == [(16, TALKER - 1), (16, spoken.codes[1].shape[1])]
    assert 0 < spoken.codes[1].shape[1] < TALKER - 1
    assert [len(a) for a in spoken.audio] == [1920 * c.shape[1] - 555 for c in spoken.codes]
    ids, codes, waves = omni_parity.reference_speech(
        model, inputs, NEW, "Ethan", talker_max_new_tokens=TALKER
    )
    np.testing.assert_array_equal(spoken.ids, ids)
    for ours, ref in zip(spoken.audio, waves, strict=True):
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    text = pipe.generate(inputs, max_new_tokens=NEW)
    np.testing.assert_array_equal(text, spoken.ids)


@pytest.mark.parametrize("packet", [1, 4, 25])
def test_stream_joins_to_the_one_shot_speech(pipe, inputs, spoken, packet):
    """Packets of 1, 4 and 25 frames (the Thinker decodes as many tokens per call), text and audio
    interleaved."""
    first = packet
    events = list(pipe.stream(
        inputs, max_new_tokens=NEW, return_audio=True, packet=packet, first_packet=first,
        talker_do_sample=False, talker_max_new_tokens=TALKER,
    ))  # fmt: skip
    kinds = [e.kind for e in events]
    assert kinds[0] == "text" and "audio" in kinds
    if packet < NEW // 2:  # the talker starts early: audio comes before the Thinker's last text
        assert kinds.index("audio") < len(kinds) - 1 - kinds[::-1].index("text")
    texts = ["".join(parts) for parts in zip(*(e.data for e in events if e.kind == "text"), strict=True)]
    assert texts == pipe.decode(spoken.ids)
    for r, full in enumerate(spoken.audio):
        joined = np.concatenate([e.data[r] for e in events if e.kind == "audio"])
        np.testing.assert_allclose(joined, full, atol=1e-5)
    if packet == 1:
        assert len(events[kinds.index("audio")].data[0]) == 1920 - 555  # the first packet: one frame


def test_wav_stream_follows_the_chunk_schedule(pipe):
    """Past a chunk the packets restart with the context frames, as chunked_decode (the schedule scaled down
    from 300 / 25 frames to 8 / 3)."""
    config, params = pipe.speech.code2wav, pipe.params["code2wav"]
    codes = np.random.default_rng(0).integers(0, config.codebook_size, (1, config.num_quantizers, 20))
    full = np.asarray(code2wav.chunked_decode(params, config, codes, 8, 3))[0]
    with mock.patch.object(speech, "CHUNK", 8), mock.patch.object(speech, "CONTEXT", 3):
        stream = speech.WavStream(params, config, 1, packet=8)
        chunks = [stream.push(codes[:, :, f]) for f in range(codes.shape[-1])] + [stream.flush()]
        assert speech.wave_length(config, 20) == len(full) == 1920 * 20 - 3 * 555
    joined = np.concatenate([c[0] for c in chunks if c is not None])
    np.testing.assert_allclose(joined, full, atol=1e-5)


def test_sampled_speech_is_seeded_and_never_suppressed(pipe, inputs):
    one = row(inputs, 0)
    runs = [
        pipe.generate(one, max_new_tokens=NEW, return_audio=True, talker_max_new_tokens=TALKER, seed=s)
        for s in (3, 3, 4)
    ]
    np.testing.assert_array_equal(runs[0].codes[0], runs[1].codes[0])
    np.testing.assert_array_equal(runs[0].audio[0], runs[1].audio[0])
    assert not np.array_equal(runs[0].codes[0][:, :4], runs[2].codes[0][:, :4])
    suppressed = set(pipe.speech.talker.suppress_tokens)
    assert all(not suppressed & set(r.codes[0][0].tolist()) for r in runs)
    assert all(r.codes[0].max() < pipe.speech.code2wav.codebook_size for r in runs)


def test_bad_speech_requests_fail_early(pipe, inputs):
    with pytest.raises(ValueError, match=r"unknown speaker 'Nobody'.*aiden.*chelsie.*ethan"):
        pipe.generate(inputs, max_new_tokens=NEW, return_audio=True, speaker="Nobody")
    with pytest.raises(ValueError, match="packet sizes must be >= 1"):
        pipe.stream(inputs, max_new_tokens=NEW, return_audio=True, packet=0)
    with pytest.raises(ValueError, match="unknown talker options"):
        pipe.generate(inputs, max_new_tokens=NEW, return_audio=True, talker_beams=2)
    text_only = copy.copy(pipe)
    text_only.speech = None
    text_only.params = {k: pipe.params[k] for k in ("audio_encoder", "thinker")}
    with pytest.raises(ValueError, match="needs the talker and code2wav weights"):
        text_only.generate(inputs, max_new_tokens=NEW, return_audio=True)


def test_cli_speaks(folder, pipe, clips, inputs, tmp_path, capsys):
    """--speak writes the 24-kHz answer and prints the text (row 0's clip and request)."""
    clip, out = tmp_path / "clip.wav", tmp_path / "answer.wav"
    save_audio(clip, clips[0], 16000)
    argv = ["--model", str(folder), "--audio", str(clip), "--prompt", "What is said?", "--max-new-tokens",
            str(NEW), "--speak", str(out), "--speaker", "chelsie", "--talker-max-new-tokens", str(TALKER),
            "--talker-greedy", "--json"]  # fmt: skip
    assert generate_cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    wav, rate = sf.read(out, dtype="float32")
    spoken = pipe.generate(row(inputs, 0), max_new_tokens=NEW, return_audio=True, speaker="chelsie",
                           talker_do_sample=False, talker_max_new_tokens=TALKER)  # fmt: skip
    assert rate == 24000 and result["speech"]["samples"] == len(wav) == len(spoken.audio[0])
    assert result["text"] == pipe.decode(spoken.ids) and result["ids"] == spoken.ids.tolist()
    np.testing.assert_allclose(wav, spoken.audio[0], atol=1e-4)  # 16-bit PCM
