"""Gradient parity: transformers' forward + backward against omni_jax's training loss and `jax.grad`.

    report = compare_grads(hf_model, input_ids=..., attention_mask=..., input_features=..., labels=...)
    assert report.ok, report

torch runs `model(**inputs).loss.backward()` (dropout off: train mode with the zero dropouts of these
configs); omni_jax converts the same weights and differentiates `omni_jax.train.models.mean_loss` on the
same batch. Parameters transformers keeps frozen (requires_grad=False) are left out on both sides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from omni_jax.convert.keymap import export_targets
from omni_jax.nn.params import flatten_paths

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
# gradients that vanish by symmetry (attention key biases) are rounding noise: they are measured against
# this fraction of the largest gradient instead of their own scale
ZERO_GRAD_FLOOR = 1e-3


@dataclasses.dataclass(frozen=True)
class GradReport:
    name: str
    loss: float  # transformers'
    loss_diff: float  # |ours - transformers'|
    grad_max_abs_diff: float
    grad_max_rel_diff: float  # max over parameters of max |g - g_ref| / max |g_ref|
    worst: str  # HF name of the parameter with the largest relative difference
    compared: int  # parameters compared

    @property
    def ok(self) -> bool:
        return (
            self.loss_diff <= LOSS_RTOL * max(abs(self.loss), 1e-12) and self.grad_max_rel_diff <= GRAD_RTOL
        )

    def __str__(self) -> str:
        return (
            f"{self.name}: loss {self.loss:.7g} diff {self.loss_diff:.3g}; grads of {self.compared} "
            f"parameters max_abs {self.grad_max_abs_diff:.3g} max_rel {self.grad_max_rel_diff:.3g} "
            f"(worst {self.worst}) {'ok' if self.ok else 'FAIL'}"
        )


def _torch_grads(model, inputs: dict) -> tuple[float, dict]:
    """transformers' loss, and every state-dict entry with parameters replaced by their gradients (0 when
    unused or frozen)."""
    import torch

    model.train()
    model.zero_grad()
    out = model(**inputs)
    out.loss.backward()
    state = dict(model.state_dict())
    for name, p in model.named_parameters():
        state[name] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    model.eval()
    return float(out.loss.detach()), state


def compare_grads(torch_model: Any, **inputs: Any) -> GradReport:
    """Loss and gradients of a transformers AudioFlamingo3 / Qwen3-Omni Thinker model on `inputs`
    (torch tensors, `labels` included) against omni_jax's."""
    from omni_jax.parity.core import numpy_inputs
    from omni_jax.train import models
    from omni_jax.train.loss import keep_label_window, target_span

    if "labels" not in inputs:
        raise ValueError("compare_grads needs labels among the inputs")
    name = type(torch_model).__name__
    family = models.family_of(hf_class=name)
    cmap = next(m for m in family.maps if name in m.architectures)
    hf_config = torch_model.config.to_dict()
    ref_loss, grad_state = _torch_grads(torch_model, inputs)
    params = jax.tree.map(jax.numpy.asarray, cmap.state_to_params(dict(torch_model.state_dict()), hf_config))
    reference = cmap.state_to_params(grad_state, hf_config)
    config = family.config_class.from_hf(hf_config)
    batch = family.batch(
        config, numpy_inputs({k: v for k, v in inputs.items() if k != "output_router_logits"})
    )
    # as training runs it: the lm_head on the fewest last positions that hold every target
    batch["labels"] = keep_label_window(batch["labels"], target_span(batch["labels"]))
    coef = getattr(torch_model, "router_aux_loss_coef", 0.0) if _router_aux_on(torch_model, inputs) else 0.0
    loss, grads = jax.jit(jax.value_and_grad(lambda p, b: models.mean_loss(family, config, p, b, coef)))(
        params, batch
    )
    rules = cmap.rules(cmap.config(hf_config))
    pairs = [
        (export_targets(rules, path, g.shape)[0][0], np.asarray(g), np.asarray(_leaf(reference, path)))
        for path, g in flatten_paths(grads)
        if path not in family.not_trainable
    ]
    floor = ZERO_GRAD_FLOOR * max(float(np.abs(ref).max()) for _, _, ref in pairs)
    rows = []
    for hf_name, g, ref in pairs:
        diff = float(np.abs(g - ref).max())
        rows.append((diff / max(float(np.abs(ref).max()), floor), diff, hf_name))
    rel, _, worst = max(rows)
    return GradReport(
        name, ref_loss, abs(float(loss) - ref_loss), max(r[1] for r in rows), rel, worst, len(rows)
    )


def _router_aux_on(model, inputs: dict) -> bool:
    text = getattr(model.config, "text_config", None)
    return bool(inputs.get("output_router_logits") or getattr(text, "output_router_logits", False))


def _leaf(tree: dict, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree
