"""python -m omni_jax.convert and load_pretrained against tiny random transformers checkpoints on disk."""

import copy
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import omni_jax
from omni_jax.cli.convert import main
from omni_jax.convert import run as pipeline
from omni_jax.convert.keymap import ConversionError, hf_to_params

ROOT = Path(__file__).resolve().parents[1]


def save_variants(model, folder: Path) -> dict[str, Path]:
    """The model as save_pretrained writes it (single file, and sharded with an index) and as a
    pytorch_model.bin of its in-memory state dict."""
    out = {"single": folder / "single", "sharded": folder / "sharded", "bin": folder / "bin"}
    model.save_pretrained(out["single"])
    model.save_pretrained(out["sharded"], max_shard_size="40KB")
    out["bin"].mkdir()
    for f in out["single"].glob("*.json"):
        shutil.copy(f, out["bin"] / f.name)
    torch.save(model.state_dict(), out["bin"] / "pytorch_model.bin")
    assert len(list(out["sharded"].glob("*.safetensors"))) > 1
    return out


def hf_state(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    state = {}
    for f in folder.glob("*.safetensors"):
        state.update(load_file(f))
    return state


# ---------------------------------------------------------------- whisper (encoder and decoder parts)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=64,
        num_mel_bins=16,
        encoder_layers=2,
        decoder_layers=1,
        d_model=32,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=8,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    return model, save_variants(model, tmp_path_factory.mktemp("whisper"))


def whisper_diff(model, params, config) -> float:
    from omni_jax.models import whisper_encoder

    x = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.model.encoder(x).last_hidden_state.numpy()
    ours = whisper_encoder.forward(params["encoder"], config["encoder"], x.numpy())
    return float(np.abs(ref - np.asarray(ours)).max())


@pytest.mark.parametrize("variant", ["single", "sharded", "bin"])
@pytest.mark.parametrize("fmt", ["orbax", "safetensors"])
def test_whisper_converts_and_matches_torch(whisper, tmp_path, variant, fmt):
    model, folders = whisper
    dst = tmp_path / "jax"
    manifest = pipeline.to_jax(folders[variant], dst, fmt=fmt)
    assert manifest["parts"] == ["encoder", "decoder"]
    assert all(k.startswith("proj_out.") for k in manifest["passthrough"])  # the tied embedding
    assert {f["name"] for f in manifest["source"]["files"]} == {
        p.name for p in folders[variant].iterdir() if p.suffix in (".safetensors", ".bin")
    }
    assert (dst / "config.json").is_file() and (dst / "generation_config.json").is_file()
    config, params = omni_jax.load_pretrained(dst)
    assert whisper_diff(model, params, config) <= 1e-4
    if variant == "single":  # the HF folder itself, converted on the fly
        config, params = omni_jax.load_pretrained(folders[variant])
        assert whisper_diff(model, params, config) <= 1e-4


@pytest.mark.parametrize("fmt", ["orbax", "safetensors"])
def test_whisper_round_trip_is_bit_identical(whisper, tmp_path, fmt):
    from transformers import WhisperForConditionalGeneration

    model, folders = whisper
    assert main(["to-jax", str(folders["single"]), str(tmp_path / "jax"), "--format", fmt, "--quiet"]) == 0
    assert main(["to-hf", str(tmp_path / "jax"), str(tmp_path / "hf"), "--quiet"]) == 0
    before, after = hf_state(folders["single"]), hf_state(tmp_path / "hf")
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and np.array_equal(before[key], after[key]), key
    assert json.loads((tmp_path / "hf/config.json").read_text()) == json.loads(
        (folders["single"] / "config.json").read_text()
    )
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(1, 16, 16)
    ids = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        assert torch.equal(model(x, decoder_input_ids=ids).logits, reloaded(x, decoder_input_ids=ids).logits)


def test_bfloat16_round_trip(whisper, tmp_path):
    model, folders = whisper
    bf16 = tmp_path / "bf16"
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(bf16)
    pipeline.to_jax(bf16, tmp_path / "jax", fmt="safetensors")
    _, params = omni_jax.load_pretrained(tmp_path / "jax")
    assert params["encoder"]["conv1"]["kernel"].dtype == jax.numpy.bfloat16
    pipeline.to_hf(tmp_path / "jax", tmp_path / "hf")
    before, after = hf_state(bf16), hf_state(tmp_path / "hf")
    assert all(
        before[k].dtype == after[k].dtype
        and np.array_equal(before[k].view(np.uint16), after[k].view(np.uint16))
        for k in before
    )
    pipeline.to_jax(bf16, tmp_path / "f32", dtype="float32")
    _, params = omni_jax.load_pretrained(tmp_path / "f32")
    assert params["encoder"]["conv1"]["kernel"].dtype == jax.numpy.float32


def test_load_with_mesh_places_each_array_in_its_sharding(whisper, tmp_path):
    model, folders = whisper
    from omni_jax.sharding import make_mesh

    mesh = make_mesh(tensor=8)
    for fmt in ("orbax", "safetensors"):
        pipeline.to_jax(folders["single"], tmp_path / fmt, fmt=fmt)
        config, params = omni_jax.load_pretrained(tmp_path / fmt, mesh=mesh, rules=(("mlp", ("tensor",)),))
        fc1 = params["encoder"]["layers"]["fc1"]["kernel"]  # (layers, embed, mlp)
        assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor")
        assert fc1.addressable_shards[0].data.shape == (2, 32, 8)
        assert params["encoder"]["pos_embed"].sharding.is_fully_replicated
        assert whisper_diff(model, params, config) <= 1e-4


def test_inspect_shows_both_sides(whisper, tmp_path, capsys):
    _, folders = whisper
    assert main(["inspect", str(folders["sharded"])]) == 0
    out = capsys.readouterr().out
    assert (
        "model.encoder.layers.0.fc1.weight ... (2 keys) [64, 32] F32 -> "
        "encoder/layers/fc1/kernel [2, 32, 64] (transpose)" in out
    )
    assert "decoder/layers/cross/k/kernel [1, 32, 32]" in out and "PROBLEM" not in out
    pipeline.to_jax(folders["single"], tmp_path / "jax")
    assert main(["inspect", str(tmp_path / "jax")]) == 0
    assert (
        "encoder/layers/fc1/kernel [2, 32, 64] float32 <- model.encoder.layers.0.fc1.weight ... (2 keys)"
        in capsys.readouterr().out
    )


# ---------------------------------------------------------------- bad inputs


def corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def problems_of(folder: Path) -> str:
    with pytest.raises(ConversionError) as e:
        pipeline.to_jax(folder, folder.parent / (folder.name + "_out"))
    assert not (folder.parent / (folder.name + "_out")).exists()
    return str(e.value)


def test_every_problem_is_reported_at_once(whisper, tmp_path):
    _, folders = whisper
    bad = corrupt_copy(folders["single"], tmp_path / "bad")
    state = hf_state(bad)
    del state["model.encoder.layers.1.fc2.bias"]
    state["model.encoder.layers.0.fc1.weight"] = np.zeros((64, 31), np.float32)
    state["model.encoder.extra.weight"] = np.zeros(3, np.float32)
    state["model.encoder.layers.5.fc1.bias"] = np.zeros(64, np.float32)
    state["model.encoder.conv1.bias"] = np.zeros(32, np.int8)
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    message = problems_of(bad)
    for expected in (
        "missing key(s) for encoder/layers/fc2/bias: 'model.encoder.layers.1.fc2.bias'",
        "model.safetensors: shape mismatch for 'model.encoder.layers.0.fc1.weight' -> "
        "encoder/layers/fc1/kernel[0]: expected (64, 32), got (64, 31)",
        "model.safetensors: unexpected key 'model.encoder.extra.weight' (3,)",
        "model.safetensors: unexpected key 'model.encoder.layers.5.fc1.bias': index [5] is out of range",
        "model.safetensors: unsupported dtype I8 for 'model.encoder.conv1.bias'",
    ):
        assert expected in message, message


def test_truncated_corrupt_and_missing_shards(whisper, tmp_path):
    _, folders = whisper
    bad = corrupt_copy(folders["sharded"], tmp_path / "sharded")
    shards = sorted(bad.glob("model-*.safetensors"))
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) - 100])  # truncated
    shards[1].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")  # corrupt header
    shards[2].unlink()  # named by the index, absent
    message = problems_of(bad)
    assert f"{shards[0].name}: truncated" in message
    assert f"{shards[1].name}: corrupt safetensors header" in message
    assert f"index names missing shard {shards[2].name!r}" in message

    bin_bad = corrupt_copy(folders["bin"], tmp_path / "bin")
    data = (bin_bad / "pytorch_model.bin").read_bytes()
    (bin_bad / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    assert "pytorch_model.bin: cannot read" in problems_of(bin_bad)


def test_unknown_model_type_lists_the_supported_ones(whisper, tmp_path, capsys):
    _, folders = whisper
    bad = corrupt_copy(folders["single"], tmp_path / "llama")
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (bad / "config.json").write_text(json.dumps(cfg))
    assert main(["to-jax", str(bad), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "unsupported model_type 'llama'" in err
    assert "audioflamingo3, qwen2, qwen3, qwen3_moe, qwen3_omni_moe, qwen3_omni_moe_thinker, whisper" in err


def test_existing_destination_is_refused_then_replaced(whisper, tmp_path):
    _, folders = whisper
    dst = tmp_path / "jax"
    dst.mkdir()
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        pipeline.to_jax(folders["single"], dst)
    pipeline.to_jax(folders["single"], dst, overwrite=True)
    assert (dst / "omni_jax.json").is_file()


# ---------------------------------------------------------------- every supported model type


def decoder_logits(params, config, ids) -> np.ndarray:
    from omni_jax.models import decoder

    out, _ = decoder.forward(params, config, jax.numpy.asarray(ids))
    return np.asarray(out.logits)


def tiny_causal_lm(model_type: str):
    import transformers

    common = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=False,
    )
    cls, cfg = {
        "qwen2": ("Qwen2ForCausalLM", transformers.Qwen2Config(**common)),
        "qwen3": ("Qwen3ForCausalLM", transformers.Qwen3Config(**common)),
        "qwen3_moe": (
            "Qwen3MoeForCausalLM",
            transformers.Qwen3MoeConfig(
                **common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, mlp_only_layers=[1]
            ),
        ),
    }[model_type]
    torch.manual_seed(0)
    return getattr(transformers, cls)(cfg).eval()


IDS = np.array([[3, 17, 42, 5, 88, 1], [9, 9, 60, 2, 31, 77]])


def round_trip(src: Path, tmp: Path, fmt: str = "safetensors") -> Path:
    pipeline.to_jax(src, tmp / "rt_jax", fmt=fmt)
    pipeline.to_hf(tmp / "rt_jax", tmp / "rt_hf")
    before, after = hf_state(src), hf_state(tmp / "rt_hf")
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and np.array_equal(before[key], after[key]), key
    return tmp / "rt_hf"


def assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "qwen3_moe"])
def test_causal_lms_convert_match_torch_and_round_trip(model_type, tmp_path):
    import transformers

    model = tiny_causal_lm(model_type)
    folders = save_variants(model, tmp_path)
    with torch.no_grad():
        ref = model(torch.tensor(IDS)).logits.numpy()
    loaded = {}
    for variant, folder in folders.items():
        pipeline.to_jax(folder, tmp_path / f"jax_{variant}")
        config, loaded[variant] = omni_jax.load_pretrained(tmp_path / f"jax_{variant}")
    assert np.abs(decoder_logits(loaded["single"], config, IDS) - ref).max() <= 1e-4
    assert_same_params(loaded["single"], loaded["sharded"])
    assert_same_params(loaded["single"], loaded["bin"])  # in-memory layout (fused experts) read as well
    hf = round_trip(folders["single"], tmp_path)
    reloaded = getattr(transformers, type(model).__name__).from_pretrained(hf).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(torch.tensor(IDS)).logits, model(torch.tensor(IDS)).logits)


@pytest.fixture(scope="module")
def audioflamingo3(tmp_path_factory):
    from transformers import AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration

    cfg = AudioFlamingo3Config(
        audio_config=dict(
            hidden_size=16,
            num_attention_heads=4,
            intermediate_size=32,
            num_hidden_layers=2,
            num_mel_bins=16,
            max_source_positions=30,
        ),
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            eos_token_id=101,
            pad_token_id=102,
        ),
        audio_token_id=100,
    )
    torch.manual_seed(0)
    model = AudioFlamingo3ForConditionalGeneration(cfg).eval()
    return model, save_variants(model, tmp_path_factory.mktemp("af3"))


def test_audioflamingo3_converts_and_matches_torch(audioflamingo3, tmp_path):
    from omni_jax.models import projector, whisper_encoder

    model, folders = audioflamingo3
    loaded = {}
    for variant, folder in folders.items():
        pipeline.to_jax(folder, tmp_path / variant, fmt="orbax" if variant == "sharded" else "safetensors")
        config, loaded[variant] = omni_jax.load_pretrained(tmp_path / variant)
    assert_same_params(loaded["single"], loaded["sharded"])
    assert_same_params(loaded["single"], loaded["bin"])  # 5.23 in-memory names
    params = loaded["single"]
    mel = torch.randn(1, 16, 60, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        audio = model.model.audio_tower(
            mel, input_features_mask=torch.ones(1, 60, dtype=torch.long)
        ).last_hidden_state
        projected = model.model.multi_modal_projector(audio)
        logits = model(input_ids=torch.tensor(IDS)).logits
    ours, _ = whisper_encoder.encode(
        params["encoder"], config["encoder"], mel.numpy(), np.ones((1, 60), np.int64)
    )
    assert np.abs(np.asarray(ours) - audio.numpy()).max() <= 1e-4
    ours = projector.forward(params["projector"], config["projector"], audio.numpy())
    assert np.abs(np.asarray(ours) - projected.numpy()).max() <= 1e-4
    assert np.abs(decoder_logits(params["decoder"], config["decoder"], IDS) - logits.numpy()).max() <= 1e-4


def test_audioflamingo3_round_trip_loads_in_transformers(audioflamingo3, tmp_path):
    from transformers import AudioFlamingo3ForConditionalGeneration

    model, folders = audioflamingo3
    hf = round_trip(folders["single"], tmp_path, fmt="orbax")
    reloaded = AudioFlamingo3ForConditionalGeneration.from_pretrained(hf).eval()
    with torch.no_grad():
        assert torch.equal(
            reloaded(input_ids=torch.tensor(IDS)).logits, model(input_ids=torch.tensor(IDS)).logits
        )


OMNI = {
    "thinker_config": {
        "audio_token_id": 250,
        "image_token_id": 245,
        "video_token_id": 246,
        "audio_start_token_id": 248,
        "audio_end_token_id": 249,
        "vision_start_token_id": 243,
        "vision_end_token_id": 244,
        "user_token_id": 10,
        "tie_word_embeddings": False,
        "audio_config": {
            "num_mel_bins": 16,
            "d_model": 32,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "downsample_hidden_size": 8,
            "output_dim": 64,
            "n_window": 50,
            "n_window_infer": 200,
            "conv_chunksize": 2,
            "max_source_positions": 1500,
        },
        "vision_config": {
            "depth": 1,
            "hidden_size": 16,
            "num_heads": 2,
            "intermediate_size": 32,
            "patch_size": 2,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
        },
        "text_config": {
            "vocab_size": 256,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "rope_scaling": {"rope_type": "default", "mrope_section": [6, 5, 5]},
            "rope_theta": 1e6,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "mlp_only_layers": [1],
        },
    },
    "talker_config": {
        "text_config": {
            "vocab_size": 1088,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 24,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1]},
            "rope_theta": 1e6,
        },
        "code_predictor_config": {
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "num_code_groups": 4,
        },
        "num_code_groups": 4,
        "thinker_hidden_size": 64,
        "spatial_merge_size": 2,
    },
    "code2wav_config": {
        "codebook_size": 64,
        "num_quantizers": 4,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": 8,
        "decoder_dim": 64,
        "upsample_rates": [8, 5, 4, 3],
        "upsampling_ratios": [2, 2],
    },
}


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(**OMNI, enable_audio_output=True)).eval()
    # transformers leaves the talker's experts uninitialised (torch.empty: garbage, at times NaN) and its
    # routers at zero (every expert ties, top-k falls to tie-breaking order): draw both, seeded
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            router = name.endswith("mlp.gate.weight")
            if name.startswith("talker.") and (router or ".mlp.experts." in name):
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if router else 0.05))
    folder = tmp_path_factory.mktemp("omni")
    return model, save_variants(model, folder)


def test_qwen3_omni_converts_every_part_and_matches_torch(omni, tmp_path):
    from omni_jax.models import aut_encoder, code2wav, decoder

    model, folders = omni
    manifest = pipeline.to_jax(folders["single"], tmp_path / "jax")
    assert manifest["parts"] == ["audio_encoder", "vision_encoder", "thinker", "talker", "code2wav"]
    assert not manifest["passthrough"]
    config, params = omni_jax.load_pretrained(tmp_path / "jax")
    pipeline.to_jax(folders["bin"], tmp_path / "bin")  # in-memory names, fused experts
    assert_same_params(params, omni_jax.load_pretrained(tmp_path / "bin")[1])

    with torch.no_grad():
        logits = model.thinker(input_ids=torch.tensor(IDS)).logits.numpy()
    assert np.abs(decoder_logits(params["thinker"], config["thinker"], IDS) - logits).max() <= 1e-4

    embeds = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden = model.talker.model(inputs_embeds=embeds).last_hidden_state.numpy()
    out, _ = decoder.forward(
        params["talker"]["model"], config["talker"].body, jax.numpy.asarray(embeds.numpy()), logits="none"
    )
    assert np.abs(np.asarray(out.hidden) - hidden).max() <= 1e-4

    codes = torch.randint(0, 64, (1, 4, 3), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        wav = model.code2wav(codes).numpy()
    assert (
        np.abs(
            np.asarray(code2wav.code2wav(params["code2wav"], config["code2wav"], codes.numpy())) - wav
        ).max()
        <= 1e-4
    )

    audio_tower = model.thinker.model.audio_tower
    assert_same_params(
        params["audio_encoder"],
        hf_to_params(
            audio_tower.state_dict(),
            aut_encoder.hf_rules(config["audio_encoder"]),
            aut_encoder.param_specs(config["audio_encoder"]),
        ),
    )


def test_qwen3_omni_round_trip_and_missing_parts(omni, tmp_path):
    from transformers import Qwen3OmniMoeForConditionalGeneration

    model, folders = omni
    hf = round_trip(folders["sharded"], tmp_path)
    reloaded = Qwen3OmniMoeForConditionalGeneration.from_pretrained(hf).eval()
    with torch.no_grad():
        assert torch.equal(
            reloaded.thinker(input_ids=torch.tensor(IDS)).logits,
            model.thinker(input_ids=torch.tensor(IDS)).logits,
        )
    thinker_only = tmp_path / "thinker_only"
    thinker_only.mkdir()
    shutil.copy(folders["single"] / "config.json", thinker_only)
    save_file(
        {k: v for k, v in hf_state(folders["single"]).items() if k.startswith("thinker.")},
        thinker_only / "model.safetensors",
        metadata={"format": "pt"},
    )
    manifest = pipeline.to_jax(thinker_only, tmp_path / "thinker_jax")
    assert manifest["parts"] == ["audio_encoder", "vision_encoder", "thinker"]
    config, params = omni_jax.load_pretrained(tmp_path / "thinker_jax")
    assert set(params) == {"audio_encoder", "vision_encoder", "thinker"}


def test_jax_checkpoint_that_does_not_fit_the_model_is_refused(whisper, tmp_path):
    _, folders = whisper
    pipeline.to_jax(folders["single"], tmp_path / "jax")
    manifest = json.loads((tmp_path / "jax/omni_jax.json").read_text())
    manifest["params"]["encoder/conv1/kernel"]["shape"] = [3, 16, 33]
    del manifest["params"]["encoder/pos_embed"]
    (tmp_path / "jax/omni_jax.json").write_text(json.dumps(manifest))
    with pytest.raises(ConversionError) as e:
        pipeline.to_hf(tmp_path / "jax", tmp_path / "hf")
    assert "missing parameter encoder/pos_embed" in str(e.value)
    assert "shape mismatch for encoder/conv1/kernel: expected (3, 16, 32), got (3, 16, 33)" in str(e.value)
    assert not (tmp_path / "hf").exists()
