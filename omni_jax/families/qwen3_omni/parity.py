"""Qwen3-Omni against transformers: logits and greedy tokens of Qwen3OmniMoeThinkerForConditionalGeneration,
the whole speech chain of Qwen3OmniMoeForConditionalGeneration (`compare_generate(..., return_audio=True)`:
text tokens, all codebooks, waveform SNR), and the per-stage table of `python -m omni_jax.parity`
(processor, features, audio encoder, fusion, positions, prefill logits, greedy tokens). The model stages
get the reference processor's tensors on both sides, so each row measures one stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert.plan import read_hf_config
from omni_jax.families.base import decode_layout
from omni_jax.families.qwen3_omni import pipeline, speech
from omni_jax.families.qwen3_omni import system as thinker
from omni_jax.families.qwen3_omni.checkpoint import MAPS
from omni_jax.families.qwen3_omni.positions import rope_index
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessorConfig
from omni_jax.models import aut_encoder, vision_encoder
from omni_jax.parity import core
from omni_jax.parity.reference import generate_case
from omni_jax.processing import vision
from omni_jax.processing.common import feature_config
from omni_jax.processing.tokenizer import load_chat_template


def from_torch(module: Any) -> tuple[thinker.ThinkerConfig, dict]:
    """Config and parameters of a transformers Qwen3OmniMoeThinkerForConditionalGeneration (its in-memory
    keys: fused experts), vision tower included."""
    cmap = next(m for m in MAPS if m.model_type == "qwen3_omni_moe_thinker")
    params = cmap.state_to_params(module.state_dict(), module.config.to_dict())
    return thinker.ThinkerConfig.from_hf(module.config), jax.tree.map(jnp.asarray, params)


def omni_from_torch(module: Any) -> tuple[tuple[thinker.ThinkerConfig, speech.SpeechConfig], dict]:
    """((ThinkerConfig, SpeechConfig), params) of a speaking Qwen3OmniMoeForConditionalGeneration (its
    in-memory keys), the decoders in the pipeline's decode layout."""
    params = jax.tree.map(jnp.asarray, MAPS[0].state_to_params(module.state_dict(), module.config.to_dict()))
    config, speech_config = (
        thinker.ThinkerConfig.from_hf(module.config),
        speech.SpeechConfig.from_hf(module.config),
    )
    params["thinker"] = decode_layout(params["thinker"], config.text)
    params["talker"] = speech.decode_layout(params["talker"], speech_config.talker)
    return (config, speech_config), params


def reference_speech(model, inputs: dict, max_new_tokens: int, speaker: str, **talker_kwargs):
    """transformers' speech generate with greedy thinker and talker: (new ids b T, codes b G N, per-row
    waveforms); the codes are the ones its Code2Wav decodes."""
    import torch

    seen = {}
    decode = model.code2wav.chunked_decode

    def record(codes, **kw):
        seen["codes"] = codes.numpy()
        return decode(codes, **kw)

    given = {k: torch.as_tensor(v) for k, v in inputs.items()}
    with torch.no_grad(), mock.patch.object(model.code2wav, "chunked_decode", record):
        ids, wav = model.generate(
            **given, speaker=speaker, return_audio=True, thinker_max_new_tokens=max_new_tokens,
            thinker_do_sample=False, talker_do_sample=False, **talker_kwargs,
        )  # fmt: skip
    waves = [w.reshape(-1).numpy() for w in (wav if isinstance(wav, list) else [wav])]
    return ids[:, given["input_ids"].shape[1] :].numpy(), seen["codes"], waves


def _speech_case(model, input_ids, attention_mask, max_new_tokens, *, speaker="Ethan", **kwargs):
    """compare_generate(..., return_audio=True): both chains greedy with the same talker_* settings."""
    talker = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("talker_")}
    talker.pop("talker_do_sample", None)
    inputs = core.numpy_inputs(dict(input_ids=input_ids, attention_mask=attention_mask, **kwargs))
    ref_ids, ref_codes, ref_waves = reference_speech(model, inputs, max_new_tokens, speaker, **talker)
    (config, speech_config), params = omni_from_torch(model)
    eos = (model.config.im_end_token_id,)
    pad = model.thinker.generation_config.pad_token_id
    pad = eos[0] if pad is None else pad
    ids = thinker.generate(params, config, inputs, max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=pad)
    ids = core.trim_to(ref_ids, np.asarray(ids), pad)
    talker_max, settings = pipeline.talker_settings({**talker, "talker_do_sample": False})
    prompt = speech.prompt_for(params, config, speech_config, inputs, ids, speaker=speaker, thinker_eos=eos)
    tokens, frames = speech.talk(params, speech_config, prompt, max_new_tokens=talker_max, settings=settings)
    codec_eos = speech_config.talker.codec_id("eos")
    waves = speech.waveforms(params["code2wav"], speech_config.code2wav, tokens, frames, codec_eos)
    lengths = speech.frame_lengths(tokens, frames, codec_eos)
    if len(frames) > 1:  # transformers zeroes a batch's codes past each row's codec_eos
        frames = np.where(np.arange(frames.shape[-1]) < lengths[:, None, None], frames, 0)
    return core.speech_report(type(model).__name__, (ref_ids, ids), (ref_codes, frames), (ref_waves, waves))


def _logits_case(module, input_ids, attention_mask=None, **inputs):
    """Logits of every valid position (padded query rows zeroed on both sides); `inputs` are the other model
    inputs (audio features, pixel values and grids, video_second_per_grid, use_audio_in_video)."""
    import torch

    config, params = from_torch(module)
    inputs = core.numpy_inputs(dict(input_ids=input_ids, attention_mask=attention_mask, **inputs))
    given = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
    with torch.no_grad():
        ref = module(**given).logits.float().numpy()
    ours = np.asarray(thinker.forward(params, config, inputs).logits)
    return core.masked_rows(ref, ours, attention_mask)


class StandInVideoProcessor:
    """omni_jax's video preprocessing in the place of transformers' Qwen2VLVideoProcessor where torchvision
    does not import: transformers' processor still expands the placeholders (audio in video included) and
    tokenises, but its pixel values and grids are then omni_jax's own, so they are not compared."""

    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, hf_dir):
        self.config = Qwen3OmniProcessorConfig.from_pretrained(hf_dir)
        self.temporal_patch_size, self.merge_size = (
            self.config.video.temporal_patch_size, self.config.video.merge_size
        )  # fmt: skip

    def __call__(self, videos, fps=None, **_):
        import transformers

        flat = [v for row in videos for v in (row if isinstance(row, list | tuple) else [row])]
        lo, hi = self.config.video_size
        pixels, grids, _ = vision.preprocess_video(
            flat, fps=fps or 1.0, config=self.config.video, min_pixels=lo, max_pixels=hi
        )
        return transformers.BatchFeature({"pixel_values_videos": pixels, "video_grid_thw": grids})


def reference_processor(hf_dir):
    """transformers' Qwen3OmniMoeProcessor from the folder's files: its image processor (AutoImageProcessor:
    the torchvision backend, else the PIL one where torchvision does not import) and its video processor
    (else StandInVideoProcessor)."""
    import transformers

    hf_dir = Path(hf_dir)
    _, features = feature_config(hf_dir)
    torchvision = transformers.utils.is_torchvision_available()
    video = transformers.AutoVideoProcessor.from_pretrained(hf_dir) if torchvision else None
    with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *_: None):
        return transformers.Qwen3OmniMoeProcessor(
            image_processor=transformers.AutoImageProcessor.from_pretrained(hf_dir),
            video_processor=video or StandInVideoProcessor(hf_dir),
            feature_extractor=transformers.WhisperFeatureExtractor(**features),
            tokenizer=transformers.AutoTokenizer.from_pretrained(hf_dir),
            chat_template=load_chat_template(hf_dir),
        )


def _reference_videos(processor, videos, fps: float, video_size: tuple[int, int]) -> tuple[list, dict]:
    """(videos, processor options) for transformers' video processor: files decoded by transformers' pyav
    loader (its default decoder needs torchcodec), frames sampled by the processor at `fps`, frames sized by
    the folder's video size (omni_jax's processor_config key; the class default otherwise). The stand-in
    takes the paths."""
    options = {"fps": fps, "do_sample_frames": True}
    if isinstance(processor.video_processor, StandInVideoProcessor):
        return [str(v) for v in videos], options
    from transformers.video_utils import load_video

    lo, hi = video_size
    loaded = [load_video(str(v), backend="pyav") for v in videos]
    options |= {
        "video_metadata": [meta for _, meta in loaded],
        "videos_kwargs": {"size": {"shortest_edge": lo, "longest_edge": hi}},
    }
    return [frames for frames, _ in loaded], options


def reference_inputs(processor, chats, audios, images, videos, fps, use_audio_in_video, video_size) -> dict:
    """transformers' processor outputs for the chats (numpy; the images read by transformers' load_image, the
    videos as `_reference_videos`); with use_audio_in_video the videos' sound tracks are decoded by omni_jax
    (transformers' load_audio reads a video container only with torchcodec)."""
    from transformers.image_utils import load_image

    text = processor.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
    given, options = _reference_videos(processor, videos, fps, video_size) if videos else (None, {})
    if use_audio_in_video:
        audios = [vision.load_video_audio(v) for v in videos]
        options |= {"load_audio_from_video": True, "audio_from_video_indices": list(range(len(videos)))}
    ref = processor(
        text=text, images=[load_image(str(i)) for i in images] if images else None, videos=given,
        audio=[np.asarray(a, np.float32) for a in audios] if audios else None,
        padding=True, return_tensors="np", **options,
    )  # fmt: skip
    ref = {k: np.asarray(v) for k, v in ref.items()}
    return ref | ({"use_audio_in_video": True} if use_audio_in_video else {})


def _pixel_tolerance(image_processor) -> tuple[float, str]:
    """(atol of pixel_values, the reference's name): the torchvision backend is the bit-exact reference; the
    PIL backend's bicubic resize differs from it by up to 2 uint8 levels (spec 3.3)."""
    if type(image_processor).__name__.endswith("Pil"):
        levels = 2 / (255 * min(image_processor.image_std))
        return levels + 1e-6, "PIL backend, atol 2 levels"
    return 1e-6, "torchvision backend"


def processor_reports(processor, ref: dict, ours: dict) -> list[core.Report]:
    """Ids and masks, then per input kind its grids and pixels (features: the log-mel)."""

    def same(*keys):
        return all(k in ours and np.array_equal(ours[k], ref[k]) for k in keys if k in ref)

    masks = ("input_ids", "attention_mask", "feature_attention_mask")
    reports = [core.exact_report("prompt ids + masks", same(*masks), ref["input_ids"].shape)]
    if "input_features" in ref:
        reports.append(
            core.report("features (log-mel)", ref["input_features"], ours["input_features"], core.MODULE_ATOL)
        )
    if "pixel_values" in ref:
        atol, against = _pixel_tolerance(processor.image_processor)
        reports += [
            core.exact_report("image grids", same("image_grid_thw"), ref["image_grid_thw"].shape),
            core.report(f"pixel_values (vs {against})", ref["pixel_values"], ours["pixel_values"], atol),
        ]  # fmt: skip
    if "pixel_values_videos" in ref:
        grids = ("video_grid_thw", "video_second_per_grid")
        if isinstance(processor.video_processor, StandInVideoProcessor):
            reports += [
                core.exact_report("video seconds per grid", same(grids[1]), ref[grids[1]].shape),
                core.skipped_report("pixel_values_videos + grids (transformers' video processor needs "
                                    "torchvision)", ref["pixel_values_videos"].shape),
            ]  # fmt: skip
        else:
            reports += [
                core.exact_report("video grids + seconds per grid", same(*grids), ref[grids[0]].shape),
                core.report("pixel_values_videos (vs transformers' video processor)",
                            ref["pixel_values_videos"], ours["pixel_values_videos"], 1e-6),
            ]  # fmt: skip
    return reports


def vision_reports(model, params: dict, config: thinker.ThinkerConfig, ref: dict) -> list[core.Report]:
    """The vision encoder on the reference's pixels, images and videos apart: its merged tokens and every
    deepstack output against transformers' Qwen3OmniMoeVisionEncoder."""
    import torch

    reports = []
    for kind, pixels, grid in (("images", "pixel_values", "image_grid_thw"),
                               ("videos", "pixel_values_videos", "video_grid_thw")):  # fmt: skip
        if pixels not in ref:
            continue
        with torch.no_grad():
            out = model.model.visual(torch.as_tensor(ref[pixels]), grid_thw=torch.as_tensor(ref[grid]))
        ours = vision_encoder.encode(params["vision_encoder"], config.vision, ref[pixels], ref[grid])
        reports.append(core.report(f"vision encoder ({kind})", out.pooler_output.numpy(),
                                   np.asarray(ours.embeds)[: ours.tokens], core.MODULE_ATOL))  # fmt: skip
        for layer, theirs, mine in zip(
            config.vision.deepstack_indexes, out.deepstack_features, ours.deepstack, strict=True
        ):
            reports.append(core.report(f"vision deepstack, block {layer} ({kind})", theirs.numpy(),
                                       np.asarray(mine)[: ours.tokens], core.MODULE_ATOL))  # fmt: skip
    return reports


def reference_thinker(hf_dir):
    """transformers' thinker of the folder (float32, eval): a whole Qwen3-Omni's or a thinker-only one's."""
    import torch
    import transformers

    if read_hf_config(hf_dir).get("model_type") == "qwen3_omni_moe_thinker":
        cls, options = transformers.Qwen3OmniMoeThinkerForConditionalGeneration, {}
    else:
        cls, options = transformers.Qwen3OmniMoeForConditionalGeneration, {"enable_audio_output": False}
    model = cls.from_pretrained(hf_dir, dtype=torch.float32, **options)
    return getattr(model, "thinker", model).eval()


def stages(
    hf_dir, audios, prompts=None, *, max_new_tokens: int = 24, images=None, videos=None, fps: float = 2.0,
    use_audio_in_video: bool = False,
) -> list[core.Report]:  # fmt: skip
    """Per-stage comparison with transformers' Qwen3OmniMoeProcessor and the thinker loaded from `hf_dir`
    (float32): processor (ids, features, grids, pixels), audio encoder, vision encoder (+ deepstack), fusion,
    positions, prefill logits, greedy tokens. audios / images / videos: one per row for each kind given
    (None: not given); fps and use_audio_in_video as `Pipeline.prepare`."""
    import torch

    model = reference_thinker(hf_dir)
    pipe = pipeline.load(hf_dir, dtype="float32")
    processor = reference_processor(hf_dir)
    chats = pipeline.conversations(audios, prompts, images=images, videos=videos)
    ref = reference_inputs(
        processor, chats, audios, images, videos, fps, use_audio_in_video, pipe.processor.config.video_size
    )
    ours = pipe.prepare(audios, prompts, images=images, videos=videos, fps=fps,
                        use_audio_in_video=use_audio_in_video)  # fmt: skip
    reports = processor_reports(processor, ref, ours)
    batch = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in ref.items()}
    mask = ref["attention_mask"]
    lengths = ref["feature_attention_mask"].sum(1) if "feature_attention_mask" in ref else ()
    grids = {k: ref.get(k) for k in ("image_grid_thw", "video_grid_thw")}
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        ref_pos, _ = model.get_rope_index(
            batch["input_ids"], *(batch.get(k) for k in grids), batch["attention_mask"], use_audio_in_video,
            torch.as_tensor(lengths) if len(lengths) else None, batch.get("video_second_per_grid"),
        )  # fmt: skip
        new = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             eos_token_id=list(pipe.eos_ids), pad_token_id=pipe.pad_id)  # fmt: skip
    p, c = pipe.params, pipe.config
    if len(lengths):
        with torch.no_grad():
            encoded = model.get_audio_features(
                batch["input_features"], batch["feature_attention_mask"]
            ).last_hidden_state
        audio = aut_encoder.encode(p["audio_encoder"], c.audio, ref["input_features"], lengths)
        reports.append(core.report("audio encoder (AuT)", encoded.numpy(), aut_encoder.pack(*audio),
                                   core.MODULE_ATOL))  # fmt: skip
    reports += vision_reports(model, p, c, ref)
    prompt = thinker.prepare_prompt(p, c, ref)
    embeds = core.masked_rows(out.hidden_states[0].numpy(), np.asarray(prompt.embeds), mask)
    reports.append(core.report("fusion (input embeddings)", *embeds, core.MODULE_ATOL))
    positions, _ = rope_index(
        c.tokens, ref["input_ids"], mask, audio_lengths=lengths, image_grid_thw=grids["image_grid_thw"],
        video_grid_thw=grids["video_grid_thw"], second_per_grids=ref.get("video_second_per_grid"),
        use_audio_in_video=use_audio_in_video,
    )  # fmt: skip
    positions = core.masked_rows(ref_pos.numpy().transpose(1, 2, 0), positions.transpose(1, 2, 0), mask)
    reports.append(core.report("MRoPE positions", *positions, 0.0))
    logits = core.masked_rows(out.logits.numpy(), np.asarray(thinker.forward(p, c, ref).logits), mask)
    reports.append(core.report("prefill logits", *logits, core.LOGITS_ATOL))
    reference = new[:, ref["input_ids"].shape[1] :].numpy()
    tokens = core.trim_to(reference, pipe.generate(ref, max_new_tokens=max_new_tokens), pipe.pad_id)
    same = reference.shape == tokens.shape and np.array_equal(reference, tokens)
    name = f"greedy tokens ({reference.shape[1]} new, {'identical' if same else 'DIFFERENT'})"
    return [*reports, core.exact_report(name, same, reference.shape)]


TABLE = core.ParityTable(
    cases={"Qwen3OmniMoeThinkerForConditionalGeneration": core.ParityCase(_logits_case, core.LOGITS_ATOL)},
    generate={"Qwen3OmniMoeThinkerForConditionalGeneration": generate_case(from_torch, thinker.generate)},
    from_torch={
        "Qwen3OmniMoeThinkerForConditionalGeneration": from_torch,
        "Qwen3OmniMoeForConditionalGeneration": omni_from_torch,
    },
    speech={"Qwen3OmniMoeForConditionalGeneration": _speech_case},
    stages=stages,
    visual=True,
)
