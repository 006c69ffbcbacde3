"""The train state and one jitted optimizer step (state donated).

    hp = Hyper(learning_rate=1e-4, warmup_steps=10, total_steps=100)
    trainable, frozen = split_params(params, freeze_patterns(["encoder/*"], family))
    tx = optimizer(hp)
    state = init_state(trainable, tx, seed=0)
    step = make_train_step(family, config, hp, tx)
    state, metrics = step(state, frozen, batch)       # batch leaves: k micro-batches x rows x ...

Gradient accumulation is a `lax.scan` over the k micro-batches. The NLL is summed and divided once by the
number of counted targets of the whole global batch (transformers' `num_items_in_batch`), so 4 micro-batches
of 2 give the update of one batch of 8. The router aux loss is averaged over the micro-batches
(`aux_coef * mean_i aux_i`; transformers' Trainer would add it at full weight per micro-batch). Frozen
leaves are a separate, non-differentiated tree: no gradient, no optimizer state. Mixed precision casts the
float32 master weights (and float features) to `compute_dtype` inside the differentiated function.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from omni_jax.nn.params import flatten_paths, set_path
from omni_jax.train.loss import count_targets
from omni_jax.train.models import Family

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Hyper:
    learning_rate: float
    total_steps: int
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    aux_coef: float = 0.0  # router load-balancing loss weight
    compute_dtype: str = "float32"

    def __post_init__(self):
        problems = []
        if self.total_steps < 1:
            problems.append(f"steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            problems.append(f"warmup_steps {self.warmup_steps} must lie in 0..steps ({self.total_steps})")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.compute_dtype not in DTYPES:
            problems.append(f"compute_dtype {self.compute_dtype!r} not in {DTYPES}")
        if problems:
            raise ValueError("; ".join(problems))

    def schedule(self) -> optax.Schedule:
        """Linear warmup from 0, cosine decay to 0 at total_steps (HF get_cosine_schedule_with_warmup)."""
        return optax.warmup_cosine_decay_schedule(
            0.0, self.learning_rate, self.warmup_steps, self.total_steps, end_value=0.0
        )


class TrainState(NamedTuple):
    step: jax.Array  # optimizer steps done (int32)
    params: dict  # trainable leaves only (float32 master weights)
    opt_state: Any
    rng: jax.Array  # raw key data (uint32); per-step keys are fold_in(rng, step)


# ---------------------------------------------------------------- freezing


def freeze_patterns(patterns: Sequence[str], family: Family) -> tuple[str, ...]:
    """The recipe's patterns plus the parameters transformers never trains (e.g. AF3's position table)."""
    return (*patterns, *family.not_trainable)


def is_frozen(path: str, patterns: Sequence[str]) -> bool:
    """fnmatch on the parameter path ("encoder/*", "decoder/layers/attn/*"); a pattern naming a subtree
    ("encoder") freezes all of it."""
    return any(fnmatch.fnmatchcase(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def split_params(params: dict, patterns: Sequence[str], train: Sequence[str] = ()) -> tuple[dict, dict]:
    """(trainable, frozen): two nested dicts holding the leaves each side owns; a leaf matching a `train`
    pattern (fnmatch: LoRA adapters) trains even inside a frozen subtree."""
    trainable: dict = {}
    frozen: dict = {}
    for path, leaf in flatten_paths(params):
        frozen_leaf = is_frozen(path, patterns) and not any(fnmatch.fnmatchcase(path, p) for p in train)
        set_path(frozen if frozen_leaf else trainable, path, leaf)
    if not trainable:
        raise ValueError(f"freeze patterns {list(patterns)} freeze every parameter: nothing to train")
    return trainable, frozen


def merge_params(a: dict, b: dict) -> dict:
    """The union of two disjoint nested dicts."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_params(out[k], v) if isinstance(v, dict) and k in out else v
    return out


def check_patterns(params: dict, patterns: Sequence[str]) -> None:
    """Every freeze pattern must match some parameter (a typo would silently train everything)."""
    paths = [p for p, _ in flatten_paths(params)]
    if unused := [p for p in patterns if not any(is_frozen(path, [p]) for path in paths)]:
        raise ValueError(f"freeze patterns {unused} match no parameter; top-level parts: {sorted(params)}")


# ---------------------------------------------------------------- optimizer


def decay_mask(params: dict) -> dict:
    """Weight decay on kernels and embeddings, not on biases and norm scales (HF's exclusions)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key not in ("bias", "scale"), params)


def optimizer(hp: Hyper) -> optax.GradientTransformation:
    """Global-norm clipping of the accumulated gradient, then AdamW on the warmup + cosine schedule."""
    return optax.chain(
        optax.clip_by_global_norm(hp.max_grad_norm),
        optax.adamw(hp.schedule(), hp.b1, hp.b2, hp.eps, weight_decay=hp.weight_decay, mask=decay_mask),
    )


def init_state(trainable: dict, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        jnp.zeros((), jnp.int32), trainable, tx.init(trainable), jax.random.key_data(jax.random.key(seed))
    )


# ---------------------------------------------------------------- step


def cast_floats(tree: Any, dtype) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def cast_features(batch: dict, dtype) -> dict:
    """The batch with its audio features in the compute dtype (positions and masks stay as they are)."""
    if "input_features" not in batch:
        return batch
    return batch | {"input_features": batch["input_features"].astype(dtype)}


def make_train_step(
    family: Family, config: Any, hp: Hyper, tx: optax.GradientTransformation, *, donate: bool = True
) -> Callable:
    """jit(step)(state, frozen, batch) -> (state, metrics); the state is donated."""
    dtype = jnp.dtype(hp.compute_dtype)
    schedule = hp.schedule()

    def micro_objective(trainable, frozen, mb, n_total, k):
        params = cast_floats(merge_params(trainable, frozen), dtype)
        nll, _, aux = family.sums(params, config, cast_features(mb, dtype))
        return nll / n_total + hp.aux_coef * aux / k, (nll, aux)

    def step(state: TrainState, frozen: dict, batch: dict):
        k = batch["labels"].shape[0]
        n_total = count_targets(batch["labels"])
        denom = jnp.maximum(n_total, 1).astype(jnp.float32)

        def accumulate(carry, mb):
            grads, nll, aux = carry
            (_, (mb_nll, mb_aux)), g = jax.value_and_grad(micro_objective, has_aux=True)(
                state.params, frozen, mb, denom, k
            )
            return (jax.tree.map(jnp.add, grads, g), nll + mb_nll, aux + mb_aux), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        with jax.named_scope("accumulate"):
            # one micro-batch: straight-line code (XLA CPU runs some ops, e.g. conv kernel gradients, far
            # slower inside a while body)
            (grads, nll, aux), _ = jax.lax.scan(accumulate, init, batch, unroll=k == 1)
        with jax.named_scope("optimizer"):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": nll / denom + hp.aux_coef * aux / k,
            "aux_loss": aux / k,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            "tokens": n_total,
            "input_tokens": batch["attention_mask"].sum(),
        }
        return TrainState(state.step + 1, params, opt_state, state.rng), metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_eval_step(family: Family, config: Any, hp: Hyper) -> Callable:
    """jit(eval)(trainable, frozen, batch) -> (summed NLL, counted targets) over the k micro-batches."""
    dtype = jnp.dtype(hp.compute_dtype)

    def evaluate(trainable, frozen, batch):
        params = cast_floats(merge_params(trainable, frozen), dtype)

        def one(carry, mb):
            nll, n, _ = family.sums(params, config, cast_features(mb, dtype))
            return (carry[0] + nll, carry[1] + n), None

        (nll, n), _ = jax.lax.scan(one, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)), batch)
        return nll, n

    return jax.jit(evaluate)
