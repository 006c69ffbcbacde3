"""Qwen3-Omni Thinker end to end against transformers (configs/tiny-qwen3-omni-thinker.json, float32, CPU).

The tiny checkpoint is a `Qwen3OmniMoeForConditionalGeneration` without talker, saved with `save_pretrained`
(hub layout: per-expert keys) next to the offline tiny tokenizer, so the real special-token ids are used. Two
clips of 5.0 s and 2.3 s give 65 and 30 audio tokens: 3 and 2 attention windows of 26 tokens.
"""

import dataclasses
import json
from importlib import resources

import jax
import numpy as np
import pytest
import torch

from omni_jax import parity
from omni_jax.audio import load_audio
from omni_jax.convert import run as convert
from omni_jax.families.base import decode_layout
from omni_jax.families.qwen3_omni import parity as qwen3_omni_parity
from omni_jax.families.qwen3_omni import pipeline as qwen3_omni
from omni_jax.families.qwen3_omni import system as thinker
from omni_jax.families.qwen3_omni.positions import PositionConfig, rope_index
from omni_jax.nn.cache import init_cache
from omni_jax.parity.reference import randomize
from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

CONFIG = resources.files("omni_jax").parent / "configs" / "tiny-qwen3-omni-thinker.json"
NEW = 10
VS, VE, IMG, VID, AS, AE, AP = 151652, 151653, 151655, 151656, 151669, 151670, 151675


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The saved tiny checkpoint. Re-drawn weights, the token embeddings and the audio tower's output scaled
    x10 so the token ids and the audio steer the greedy path (with the default scale every step repeats one
    token)."""
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    torch.manual_seed(0)
    model = randomize(
        Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(**json.loads(CONFIG.read_text())))
    )
    with torch.no_grad():
        for p in (
            model.thinker.model.language_model.embed_tokens.weight,
            *model.thinker.model.audio_tower.proj2.parameters(),
        ):
            p.mul_(10)
    path = tmp_path_factory.mktemp("qwen3_omni") / "tiny"
    model.save_pretrained(path)
    save_tokenizer_files(path, "qwen3_omni_moe")
    return path


@pytest.fixture(scope="module")
def model(folder):
    from transformers import Qwen3OmniMoeForConditionalGeneration

    return Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        folder, enable_audio_output=False
    ).thinker.eval()


@pytest.fixture(scope="module")
def pipe(folder):
    return qwen3_omni.load(folder)


@pytest.fixture(scope="module")
def clips():
    speech = load_audio(resources.files("omni_jax") / "assets" / "speech.wav")
    noise = 0.1 * np.random.default_rng(0).standard_normal(36_800).astype(np.float32)
    return [np.resize(speech, 80_000), noise]  # 500 and 230 mel frames


@pytest.fixture(scope="module")
def inputs(pipe, clips):
    return pipe.prepare(clips, ["What is said?", None])


def torch_inputs(inputs):
    return {k: torch.as_tensor(np.array(v)) for k, v in inputs.items()}


def test_every_stage_matches_transformers(folder, clips):
    """Processor, log-mel, AuT, fusion, positions, logits (<= 1e-3), greedy tokens; two clips in a batch."""
    reports = qwen3_omni_parity.stages(folder, clips, ["What is said?", None], max_new_tokens=NEW)
    assert [r.name.split(" (")[0] for r in reports] == [
        "prompt ids + masks", "features", "audio encoder", "fusion", "MRoPE positions", "prefill logits",
        "greedy tokens",
    ]  # fmt: skip
    assert all(r.ok for r in reports), "\n".join(map(str, reports))
    assert reports[-1].shape == (2, NEW)


def test_compare_and_compare_generate(model, inputs):
    """parity.compare / compare_generate route the transformers thinker here (in-memory fused experts)."""
    batch = torch_inputs(inputs)
    assert parity.compare(model, **batch).ok
    model.generation_config.eos_token_id = qwen3_omni.IM_END
    result = parity.compare_generate(model, batch.pop("input_ids"), batch.pop("attention_mask"), NEW, **batch)
    assert result.ok, str(result)
    assert len(set(result.reference.ravel().tolist())) > 4 and not np.array_equal(*result.reference)


def test_checkpoint_layouts_give_the_same_parameters(folder, model, pipe, tmp_path):
    """Hub per-expert keys (the saved folder), the in-memory fused layout and an omni_jax conversion agree."""
    config, fused = parity.from_torch(model)
    fused = {  # the pipelines' CPU layout
        **fused,
        "thinker": decode_layout(fused["thinker"], config.text),
        "audio_encoder": thinker.aut_encoder.cpu_layout(fused["audio_encoder"]),
    }
    convert.to_jax(folder, tmp_path / "jax")
    converted = qwen3_omni.load(tmp_path / "jax")
    for tree in (pipe.params, converted.params):
        jax.tree.map(np.testing.assert_array_equal, fused, tree)
    assert converted.processor.audio_token_id == AP


def left_padded(*rows):
    ids = np.zeros((len(rows), max(map(len, rows))), np.int64)
    for i, row in enumerate(rows):
        ids[i, ids.shape[1] - len(row) :] = row
    return ids, (np.cumsum(ids != 0, 1) > 0).astype(np.int64)


def audio(frames):
    return [AS] + [AP] * int(thinker.aut_encoder.audio_token_count(frames)) + [AE]


def vision(token, grid):
    return [VS] + [token] * (int(np.prod(grid)) // 4) + [VE]


POSITION_CASES = {
    "text, audio, images, video (0.7 s per grid), left padding": (
        left_padded(
            [1, 2, *vision(IMG, (1, 4, 4)), *audio(330), 5, *vision(VID, (3, 4, 6)), 6, *audio(130), 8, 9],
            [1, *audio(250), *vision(IMG, (1, 6, 4)), 4, 5, 6],
        ),
        dict(audio_lengths=[330, 130, 250], image_grid_thw=[[1, 4, 4], [1, 6, 4]], video_grid_thw=[[3, 4, 6]],
             second_per_grids=[0.7]),
    ),
    "audio inside a video": (
        left_padded([1, 2, VS, AS, *[0] * (12 + 43), AE, VE, 3, *audio(90), 7]),
        dict(audio_lengths=[330, 90], video_grid_thw=[[3, 4, 4]], second_per_grids=[2.0],
             use_audio_in_video=True),
    ),
    "text and audio (transformers' shortcut)": (
        left_padded([1, *audio(250), 4, 5, 6], [7, 8, *audio(130), 9]),
        dict(audio_lengths=[250, 130]),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", POSITION_CASES)
def test_positions_match_get_rope_index(model, case):
    """The general algorithm against transformers' get_rope_index (positions and deltas, exactly)."""
    (ids, mask), kwargs = POSITION_CASES[case]
    ours, delta = rope_index(PositionConfig.from_hf(model.config), ids, mask, **kwargs)
    names = {"audio_lengths": "audio_seqlens"}
    ref_kwargs = {names.get(k, k): v if isinstance(v, bool) else torch.tensor(v) for k, v in kwargs.items()}
    ref, ref_delta = model.get_rope_index(
        torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), **ref_kwargs
    )
    keep = mask.astype(bool)
    np.testing.assert_array_equal(ours[:, keep], ref.numpy()[:, keep])
    np.testing.assert_array_equal(delta, ref_delta.numpy().ravel())


def test_window_isolation_end_to_end(model, pipe, inputs):
    """Changing clip 0's last attention window (frames 400..499 -> its tokens 52..64) changes those fused
    embeddings only: its other windows, clip 1 and all of row 1's logits stay put; transformers agrees."""
    changed = dict(inputs)
    changed["input_features"] = inputs["input_features"].copy()
    changed["input_features"][0, :, 400:500] += 1.0
    base, new = (thinker.prepare_prompt(pipe.params, pipe.config, x) for x in (inputs, changed))
    slots = np.flatnonzero(inputs["input_ids"][0] == AP)
    diff = np.abs(np.asarray(new.embeds) - np.asarray(base.embeds)).max(-1)
    assert diff[0, slots[:52]].max() <= 1e-6 and diff[0, slots[52:]].min() > 1e-3
    assert diff[1].max() == 0 and diff[0, : slots[52]].max() <= 1e-6
    logits = [np.asarray(thinker.forward(pipe.params, pipe.config, x).logits) for x in (inputs, changed)]
    assert np.abs(logits[1][1] - logits[0][1]).max() <= 1e-6
    assert np.abs(logits[1][0, : slots[52]] - logits[0][0, : slots[52]]).max() <= 1e-5
    with torch.no_grad():
        ref = model(**torch_inputs(changed), output_hidden_states=True)
    keep = inputs["attention_mask"].astype(bool)
    assert np.abs(ref.hidden_states[0].numpy() - np.asarray(new.embeds))[keep].max() <= parity.MODULE_ATOL
    assert np.abs(ref.logits.numpy() - logits[1])[keep].max() <= parity.LOGITS_ATOL


def test_talker_hidden_states_prefill_and_decode(model, pipe, inputs):
    """Embeddings and layer `accept_hidden_layer` over the prompt and at a decode step (which continues from
    the last prompt position) equal transformers' hidden_states; absent unless asked for."""
    layers = thinker.talker_layers(pipe.config)
    assert layers == (0, 1)
    with torch.no_grad():
        ref = model.generate(
            **torch_inputs(inputs), max_new_tokens=2, do_sample=False, output_hidden_states=True,
            output_logits=True, return_dict_in_generate=True, pad_token_id=qwen3_omni.IM_END,
        )  # fmt: skip
    b, t = inputs["input_ids"].shape
    step = thinker.prefill(
        pipe.params,
        pipe.config,
        inputs,
        init_cache(pipe.config.text, b, 132),
        hidden_layers=layers,
        reserve=4,
    )
    keep = inputs["attention_mask"].astype(bool)
    for i in layers:
        assert np.abs(np.asarray(step.hidden_states[i]) - ref.hidden_states[0][i].numpy())[keep].max() <= 1e-4
    token = np.asarray(step.logits).argmax(-1)
    np.testing.assert_array_equal(token, ref.sequences[:, t].numpy())
    step = thinker.decode_step(pipe.params, pipe.config, token, step.cache, hidden_layers=layers)
    for i in layers:
        assert np.abs(np.asarray(step.hidden_states[i]) - ref.hidden_states[1][i].numpy()).max() <= 1e-4
    assert np.abs(np.asarray(step.logits) - ref.logits[1].numpy()).max() <= parity.LOGITS_ATOL
    assert thinker.decode_step(pipe.params, pipe.config, token, step.cache).hidden_states == {}
    with pytest.raises(ValueError, match="accept_hidden_layer"):
        thinker.talker_layers(dataclasses.replace(pipe.config, accept_hidden_layer=None))


def test_pipeline_stream_decode_and_generate_cli(pipe, inputs, folder, clips, tmp_path, capsys):
    tokens = pipe.generate(inputs, max_new_tokens=NEW)
    np.testing.assert_array_equal(np.stack(list(pipe.stream(inputs, max_new_tokens=NEW)), 1), tokens)
    texts = pipe.decode(tokens)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    from omni_jax.audio import save_audio
    from omni_jax.cli import generate as cli

    save_audio(tmp_path / "a.wav", clips[1], 16000)
    assert (
        cli.main(
            ["--model", str(folder), "--audio", str(tmp_path / "a.wav"), "--max-new-tokens", "3", "--json"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert np.shape(out["ids"]) == (1, 3)


def test_bad_inputs(pipe, inputs):
    p, c = pipe.params, pipe.config

    def run(**change):
        thinker.prepare_prompt(p, c, {**inputs, **change})

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    first = int(np.flatnonzero(ids[0] == AP)[0])
    fewer = {"input_ids": np.delete(ids, first, 1), "attention_mask": np.delete(mask, first, 1)}
    with pytest.raises(ValueError, match="placeholder count mismatch: input_ids have 94 .* give 95 tokens"):
        run(**fewer)
    extra = ids.copy()
    extra[0, first - 1] = AP  # the audio start becomes one more placeholder
    with pytest.raises(ValueError, match="placeholder count mismatch"):
        run(input_ids=extra)
    with pytest.raises(ValueError, match="placeholder count mismatch"):
        run(
            input_features=inputs["input_features"][:1],
            feature_attention_mask=inputs["feature_attention_mask"][:1],
        )
    with pytest.raises(ValueError, match="placeholder count mismatch"):
        thinker.prepare_prompt(p, c, {"input_ids": ids, "attention_mask": mask})
    with pytest.raises(
        ValueError, match="image placeholder count mismatch: input_ids have 0 .* give 4 tokens"
    ):
        run(pixel_values=np.zeros((16, 24), np.float32), image_grid_thw=np.array([[1, 4, 4]]))
    with pytest.raises(ValueError, match="come together"):
        run(video_grid_thw=np.array([[2, 4, 4]]))
    image = ids.copy()
    image[1, -3] = IMG
    with pytest.raises(ValueError, match="hold 1 image placeholder tokens but no pixel_values"):
        run(input_ids=image)
    with pytest.raises(ValueError, match="come together"):
        run(feature_attention_mask=None)
    with pytest.raises(ValueError, match="128, frames"):
        run(input_features=inputs["input_features"][:, :80])
    with pytest.raises(ValueError, match="unexpected inputs"):
        run(pixel_values_video=None)
    with pytest.raises(ValueError, match="a string or 1 strings/None \\(one per clip\\)"):
        pipe.prepare([np.zeros(16000, np.float32)], ["a", "b"])


def test_thinker_only_checkpoint_loads(folder, model, pipe, tmp_path):
    """A thinker saved on its own (model_type qwen3_omni_moe_thinker) loads and converts to equal params."""
    model.save_pretrained(tmp_path / "thinker")
    save_tokenizer_files(tmp_path / "thinker", "qwen3_omni_moe")
    alone = qwen3_omni.load(tmp_path / "thinker")
    jax.tree.map(np.testing.assert_array_equal, pipe.params, alone.params)
    convert.to_jax(tmp_path / "thinker", tmp_path / "thinker-jax")
    jax.tree.map(np.testing.assert_array_equal, pipe.params, qwen3_omni.load(tmp_path / "thinker-jax").params)


def test_no_recompilation_inside_a_bucket(pipe, clips):
    """After warm-up, other clip lengths (same AuT calls, same slot count) and other prompts (same length
    bucket) generate without compiling anything. (The processor's log-mel still compiles per padded
    waveform length: it is prepared outside the count.)"""
    from torch_fixtures import count_compilations

    pipe.generate(pipe.prepare(clips, ["What is said?", None]), max_new_tokens=NEW)
    others = [np.resize(clips[0], 76_800), clips[1][:33_600]]  # 480 and 210 frames
    other = pipe.prepare(others, ["Say it again, please.", "Who?"])
    with count_compilations() as compiles:
        pipe.generate(other, max_new_tokens=NEW)
    assert compiles == []
