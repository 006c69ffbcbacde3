"""AudioFlamingo3 against transformers: logits and greedy tokens of AudioFlamingo3ForConditionalGeneration,
and the per-stage table of `python -m omni_jax.parity` (processor, encoder, projector, prefill logits, greedy
tokens). The model stages get the reference processor's tensors on both sides, so each row measures one
stage."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.families.audioflamingo3 import pipeline, system
from omni_jax.families.audioflamingo3.checkpoint import MAPS
from omni_jax.models import projector, whisper_encoder
from omni_jax.parity import core
from omni_jax.parity.reference import generate_case

FEATURES_ATOL = core.MODULE_ATOL  # transformers' torch log-mel is float32 (see tests/test_processors.py)


def from_torch(module) -> tuple[system.Config, dict]:
    """Config and float32 params of a live AudioFlamingo3ForConditionalGeneration (in-memory key names)."""
    params = MAPS[0].state_to_params(module.state_dict(), module.config.to_dict())
    return system.Config.from_hf(module.config), jax.tree.map(jnp.asarray, params)


def _logits_case(module, input_ids, input_features=None, input_features_mask=None, attention_mask=None):
    import torch

    config, params = from_torch(module)
    inputs = dict(input_ids=input_ids, input_features=input_features, input_features_mask=input_features_mask,
                  attention_mask=attention_mask)  # fmt: skip
    with torch.no_grad():
        reference = module(**inputs).logits.float().numpy()
    inputs = core.numpy_inputs(inputs)
    ours = np.asarray(system.logits(params, config, inputs))
    return core.masked_rows(reference, ours, inputs.get("attention_mask"))


def _reference(model, batch, *, max_new_tokens: int, eos_ids, pad_id) -> dict[str, np.ndarray]:
    """transformers' encoder output, projected frames, prefill logits and greedy new tokens."""
    import torch

    with torch.no_grad():
        encoded = model.model.audio_tower(
            batch["input_features"], input_features_mask=batch["input_features_mask"]
        ).last_hidden_state
        out = {"encoder": encoded, "projector": model.model.multi_modal_projector(encoded)}
        out["logits"] = model(**batch).logits
        out["tokens"] = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=list(eos_ids) or None, pad_token_id=pad_id,
        )[:, batch["input_ids"].shape[1] :]  # fmt: skip
    return {k: v.numpy() for k, v in out.items()}


def stages(hf_dir, audios, prompts=None, *, max_new_tokens: int = 24) -> list[core.Report]:
    """Per-stage comparison with transformers' AudioFlamingo3Processor and ...ForConditionalGeneration loaded
    from `hf_dir` (float32): features, encoder, projector, prefill logits, greedy tokens."""
    import torch
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(hf_dir)
    model = transformers.AudioFlamingo3ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    pipe = pipeline.load(hf_dir, dtype="float32")
    batch = processor.apply_transcription_request([np.asarray(a, np.float32) for a in audios], prompt=prompts)
    ref, ours = core.numpy_inputs(dict(batch)), pipe.prepare(audios, prompts)
    same = all(k in ours and np.array_equal(ours[k], ref[k]) for k in ref if k != "input_features")
    out = _reference(
        model.eval(), batch, max_new_tokens=max_new_tokens, eos_ids=pipe.eos_ids, pad_id=pipe.pad_id
    )
    params, config = pipe.params, pipe.config
    hidden, _ = whisper_encoder.encode(
        params["encoder"], config.encoder, ref["input_features"], ref["input_features_mask"]
    )
    projected = projector.forward(params["projector"], config.projector, jax.numpy.asarray(out["encoder"]))
    logits = core.masked_rows(out["logits"], system.logits(params, config, ref), ref["attention_mask"])
    tokens = core.trim_to(out["tokens"], pipe.generate(ref, max_new_tokens=max_new_tokens), pipe.pad_id)
    identical = tokens.shape == out["tokens"].shape and np.array_equal(tokens, out["tokens"])
    verdict = "identical" if identical else "DIFFERENT"
    return [
        core.exact_report("prompt ids + masks", same, ref["input_ids"].shape),
        core.report("features (log-mel)", ref["input_features"], ours["input_features"], FEATURES_ATOL),
        core.report("encoder", out["encoder"], np.asarray(hidden), core.MODULE_ATOL),
        core.report("projector", out["projector"], np.asarray(projected), core.MODULE_ATOL),
        core.report("prefill logits", *logits, core.LOGITS_ATOL),
        core.exact_report(
            f"greedy tokens ({out['tokens'].shape[1]} new, {verdict})", identical, out["tokens"].shape
        ),
    ]


TABLE = core.ParityTable(
    cases={"AudioFlamingo3ForConditionalGeneration": core.ParityCase(_logits_case, core.LOGITS_ATOL)},
    generate={"AudioFlamingo3ForConditionalGeneration": generate_case(from_torch, system.generate)},
    from_torch={"AudioFlamingo3ForConditionalGeneration": from_torch},
    stages=stages,
)
