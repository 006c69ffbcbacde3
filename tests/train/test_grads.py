"""Loss and gradients of omni_jax's training loss against transformers' forward + backward (float32)."""

import numpy as np
import pytest

from omni_jax import parity
from omni_jax.audio import load_audio
from omni_jax.families.audioflamingo3.processor import AudioFlamingo3Processor
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor
from tests.train.conftest import write_clips

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def answer_labels(ids, mask, n_answer):
    """Labels on the last n_answer[i] tokens of each (left-padded) row, -100 elsewhere."""
    labels = np.full_like(ids, -100)
    for i, n in enumerate(n_answer):
        labels[i, -n:] = ids[i, -n:]
    return labels


def as_torch(inputs):
    return {k: torch.from_numpy(np.array(v)) for k, v in inputs.items()}


def test_af3_grads_match_transformers(af3_folder, tmp_path):
    names = write_clips(tmp_path, (1.0, 0.6))
    clips = [load_audio(tmp_path / n) for n in names]
    inputs = AudioFlamingo3Processor.from_pretrained(af3_folder)(
        ["<sound>Describe the sound. It is a tone", "<sound>And this one? A hum"], clips
    )
    assert not inputs["attention_mask"][1].all()  # left padding
    inputs["labels"] = answer_labels(inputs["input_ids"], inputs["attention_mask"], (3, 2))
    torch.set_num_threads(1)
    model = transformers.AudioFlamingo3ForConditionalGeneration.from_pretrained(af3_folder)
    report = parity.compare_grads(model, **as_torch(inputs))
    assert report.ok, report
    assert report.compared == 40  # stacked layers: one leaf per kind (67 HF tensors, pos table frozen)


def test_thinker_grads_with_router_aux_loss_match_transformers(thinker_folder, tmp_path):
    names = write_clips(tmp_path, (1.3, 0.5))
    clips = [load_audio(tmp_path / n) for n in names]
    processor = Qwen3OmniProcessor.from_pretrained(thinker_folder)
    pad = processor.audio_token
    inputs = processor([f"<|audio_start|>{pad}<|audio_end|>What is it? A tone",
                        f"<|audio_start|>{pad}<|audio_end|>Hum"], clips)  # fmt: skip
    assert not inputs["attention_mask"][1].all()
    inputs["labels"] = answer_labels(inputs["input_ids"], inputs["attention_mask"], (3, 2))
    torch.set_num_threads(1)
    model = transformers.Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        thinker_folder, enable_audio_output=False
    ).thinker
    assert model.router_aux_loss_coef == 0.01
    report = parity.compare_grads(model, **as_torch(inputs))
    assert report.ok, report
    mlp_gate = [n for n, p in model.named_parameters() if "mlp.gate." in n and p.grad is not None]
    assert mlp_gate and all(model.get_parameter(n).grad.abs().sum() > 0 for n in mlp_gate)  # aux flows
