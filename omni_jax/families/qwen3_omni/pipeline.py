"""Qwen3-Omni Thinker pipeline: clips + requests -> chat template + processor -> AuT + fusion -> MoE decoding.

    pipe = load("checkpoints/qwen3-omni")  # HF folder (thinker weights suffice) or its omni_jax conversion
    inputs = pipe.prepare([clip])  # default request: "Transcribe the input speech."
    inputs = pipe.prepare(images=["cat.png"], prompts=["What is this?"])  # or videos=[...], fps=2.0
    print(pipe.decode(pipe.generate(inputs, max_new_tokens=64)))

Generation stops at `<|im_end|>` (the config's im_end_token_id, transformers' thinker EOS). On CPU the
thinker decodes in `decoder.cpu_layout` (omni_jax.families.base.decode_layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from omni_jax.families.base import BasePipeline, decode_layout, load_checkpoint
from omni_jax.families.qwen3_omni import system as thinker
from omni_jax.families.qwen3_omni.checkpoint import MAPS
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor
from omni_jax.inference.sampling import GREEDY, Sampling

DEFAULT_PROMPT = "Transcribe the input speech."
VISUAL_PROMPT = "Describe what you see."
IM_END = 151645


def conversations(
    audios: list[np.ndarray] | None, prompts: list[str | None] | None, *, images: list | None = None,
    videos: list | None = None,
) -> list[list[dict]]:  # fmt: skip
    """One user turn per row: its image, video and audio (each list one item per row, or None), then its
    request (None: DEFAULT_PROMPT for audio, else VISUAL_PROMPT)."""
    given = {k: v for k, v in (("image", images), ("video", videos), ("audio", audios)) if v is not None}
    rows = {len(v) for v in given.values()} | ({len(prompts)} if prompts is not None else set())
    if not given or len(rows) != 1 or 0 in rows:
        raise ValueError(
            "need one prompt per row and one audio / image / video per row for each kind given: "
            f"{ {k: len(v) for k, v in given.items()} }, {None if prompts is None else len(prompts)} prompts"
        )
    n = rows.pop()
    prompts = [None] * n if prompts is None else list(prompts)
    default = DEFAULT_PROMPT if "audio" in given else VISUAL_PROMPT
    chats = []
    for i in range(n):
        content = [{"type": kind, kind: items[i]} for kind, items in given.items()]
        if "audio" in given:
            content[-1]["audio"] = np.asarray(audios[i], np.float32)
        content.append({"type": "text", "text": default if prompts[i] is None else prompts[i]})
        chats.append([{"role": "user", "content": content}])
    return chats


class Pipeline(BasePipeline):
    """A loaded Qwen3-Omni thinker: config, params, processor and the EOS / pad ids."""

    system = thinker

    def prepare(
        self, audios: list[np.ndarray] | None = None, prompts: list[str | None] | None = None, *,
        images: list | None = None, videos: list | None = None, fps: float = 2.0,
        use_audio_in_video: bool = False,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """16-kHz clips, images (paths, PIL images, arrays) and videos (files, or frame arrays sampled at
        `fps`), one of each kind given per row, and one request each -> numpy model inputs (left-padded).
        use_audio_in_video: each video file's sound track is heard too (and the flag goes to the model)."""
        chats = conversations(audios, prompts, images=images, videos=videos)
        options = {"fps": fps, "use_audio_in_video": use_audio_in_video} if videos else {}
        inputs = self.processor.apply_chat_template(
            chats, tokenize=True, add_generation_prompt=True, return_dict=True, processor_kwargs=options
        )
        return inputs | ({"use_audio_in_video": True} if videos and use_audio_in_video else {})

    def generate(
        self, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0
    ) -> np.ndarray:
        """New token ids b n (finished rows padded with the pad id; n stops once every row is done)."""
        ids = super().generate(inputs, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
        done = np.isin(ids, self.eos_ids).cumsum(1) > 0
        steps = int((~done).sum(1).max()) + 1  # up to the last row's EOS
        return ids[:, :steps]


def thinker_stop_ids(path: Path, hf_config: dict) -> tuple[tuple[int, ...], int]:
    """(EOS ids, pad id): `<|im_end|>` as transformers' Qwen3-Omni generate; pad from generation_config.json,
    else the EOS (transformers' fallback)."""
    eos = int(hf_config.get("im_end_token_id", IM_END))
    file = path / "generation_config.json"
    pad = json.loads(file.read_text()).get("pad_token_id") if file.is_file() else None
    return (eos,), eos if pad is None else int(pad)


def load(path, *, dtype=None) -> Pipeline:
    """An HF Qwen3-Omni folder (`model_type` qwen3_omni_moe) or its omni_jax conversion; the thinker with its
    audio and vision encoders are used."""
    path, hf_config, config, params = load_checkpoint(path, MAPS, thinker, thinker.ThinkerConfig, dtype)
    params = {
        "audio_encoder": params["audio_encoder"],
        "thinker": decode_layout(params["thinker"], config.text),
        **{k: params[k] for k in ("vision_encoder",) if k in params},
    }
    return Pipeline(
        config, params, Qwen3OmniProcessor.from_pretrained(path), *thinker_stop_ids(path, hf_config)
    )
