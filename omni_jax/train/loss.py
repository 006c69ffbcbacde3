"""Training losses as transformers computes them (pure functions).

    labels = keep_label_window(labels, w)          # host side: the last w columns hold every target
    nll, n = token_nll(logits, labels)             # sums: shifted next-token NLL over labels != -100,
                                                   # logits of those w positions only
    loss = nll / max(n, 1)                         # ForCausalLMLoss without num_items_in_batch
    aux = load_balancing_loss(routers, mask, k)    # the Thinker's router aux loss (pooled over layers)

Per micro-batch the step works with sums, so that under accumulation the NLL is divided once by the token
count of the whole (global) batch: HF's `num_items_in_batch`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = -100


def shift_labels(labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """Targets of each position: labels[:, t+1], ignore_index at the last position. b t -> b t."""
    labels = labels.astype(jnp.int32)
    pad = jnp.full(labels.shape[:-1] + (1,), ignore_index, jnp.int32)
    return jnp.concatenate([labels[..., 1:], pad], axis=-1)


def token_nll(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX
) -> tuple[jax.Array, jax.Array]:
    """Summed next-token NLL (float32 logits) and the number of counted targets. logits b t v, labels b t."""
    targets = shift_labels(labels, ignore_index)
    valid = targets != ignore_index
    logits = logits.astype(jnp.float32)
    # logsumexp - the target's logit, picked by a compare (its gradient fuses: no b t v scatter or zeros)
    hit = jnp.arange(logits.shape[-1]) == targets[..., None]  # b t v
    picked = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    nll = jax.nn.logsumexp(logits, axis=-1) - picked
    return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid).astype(jnp.int32)


def target_span(labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> int:
    """Label columns a batch needs: from the first position that predicts a target to the end of the rows."""
    counted = np.flatnonzero((np.asarray(labels)[:, 1:] != ignore_index).any(0))  # targets of 0 .. t-2
    return labels.shape[1] - int(counted[0]) if len(counted) else 1


def keep_label_window(labels: np.ndarray, window: int) -> np.ndarray:
    """Labels b t -> their last `window` columns b w: the positions whose logits the loss computes (the
    lm_head runs on those only). Refuses a window that would drop a target."""
    needed, t = target_span(labels), labels.shape[1]
    if not needed <= window <= t:
        raise ValueError(f"a label window of {window} columns drops targets (needs {needed} of {t})")
    return np.asarray(labels)[:, t - window :]


def count_targets(labels, ignore_index: int = IGNORE_INDEX):
    """Counted targets of a label batch (HF's num_items_in_batch: labels[..., 1:] != ignore_index)."""
    return (labels[..., 1:] != ignore_index).sum()


def load_balancing_loss(router_logits: jax.Array, mask: jax.Array, top_k: int) -> jax.Array:
    """transformers' `load_balancing_loss_func`: expert counts and probabilities pooled over every MoE layer
    and every attended token, E * sum_e (count_e / rows) (prob_e / rows). router_logits r n E; mask n."""
    n_experts = router_logits.shape[-1]
    probs = jax.nn.softmax(router_logits, axis=-1)  # in the logits' dtype, as HF
    _, chosen = jax.lax.top_k(probs, top_k)  # r n k
    m = mask.astype(jnp.float32)[None, :, None]
    counts = jnp.sum(jax.nn.one_hot(chosen, n_experts, dtype=jnp.float32).sum(-2) * m, axis=(0, 1))
    prob = jnp.sum(probs.astype(jnp.float32) * m, axis=(0, 1))
    rows = router_logits.shape[0] * jnp.sum(mask.astype(jnp.float32))
    return n_experts * jnp.sum((counts / rows) * (prob / rows))
