"""The train state (a plain dict pytree), its optimizer, and carrying parameters between stages.

::

    state = {
        "step": int32 scalar,                                  # steps taken in this stage
        "params": {"encoder", "head", "decoder"},
        "batch_stats": {"encoder"},
        "opt_state": optax state over the whole params pytree,
        "confidence": {"accuracy_ema": f32, "val_accuracy": f32},
    }

All three parts of the network are in the optimizer in every stage, so the optimizer state
has the same structure in every stage and a checkpoint of one stage restores into the
abstract state of another. Stages 1 and 2 freeze the decoder (it has no loss there): its
gradient is zero, which leaves Adam's moments at zero and its update at exactly 0, but weight
decay would still shrink it, so `make_optimizer(config, frozen_parts=("decoder",))` appends a
stateless transform that zeros the frozen parts' updates. Being stateless, it does not change
the optimizer-state structure (which an ``optax.multi_transform`` would).

`initial_state` creates a stage's starting state (fresh, or carried over from its source
stage's best checkpoint) in one jitted function; `abstract_state` its shapes for a restore.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcam_jax.models import PCAMNet, init_variables
from pcam_jax.training import checkpointing, mesh as mesh_lib, stages as stages_lib

PARTS = ("encoder", "head", "decoder")
OPTIMIZERS = ("adam", "adamw")
# Before any accuracy is known, P = chance for two classes. The training-accuracy EMA is
# bias-corrected (see `update_accuracy_ema`), so its starting value never shows; the
# validation accuracy keeps it until the loop writes the first evaluation's accuracy.
INITIAL_ACCURACY = 0.5


SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(optimizer_config: Any, total_steps: int | None = None) -> optax.Schedule:
    """A linear warm-up from 0 over ``warmup_steps`` (none when 0), then ``schedule``:
    "constant" (the learning rate to the end) or "cosine" (half a cosine from the learning rate
    to 0 at ``total_steps``, the stage's step count; the count restarts with each stage)."""
    lr, warmup = float(optimizer_config.learning_rate), int(optimizer_config.warmup_steps)
    kind = str(optimizer_config.schedule)
    if kind not in SCHEDULES:
        raise ValueError(f"config.optimizer.schedule must be one of {SCHEDULES}, got {kind!r}")
    if kind == "constant":
        return optax.constant_schedule(lr) if warmup <= 0 else optax.warmup_constant_schedule(0.0, lr, warmup)
    if total_steps is None or int(total_steps) <= warmup:
        raise ValueError(f"config.optimizer.schedule='cosine' needs the stage's step count (> warmup_steps="
                         f"{warmup}); got total_steps={total_steps}")
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, int(total_steps), end_value=0.0)


def _decay_mask(params):
    # Decay kernels only: biases and BatchNorm scales/offsets are left alone, as usual.
    return jax.tree.map(lambda x: x.ndim > 1, params)


def freeze_parts(parts: Sequence[str]) -> optax.GradientTransformation:
    """Stateless transform that zeros the updates of the named top-level parts of params."""
    parts = tuple(parts)

    def update_fn(updates, state, params=None):
        del params
        return {name: jax.tree.map(jnp.zeros_like, u) if name in parts else u
                for name, u in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(config: Any, *, frozen_parts: Sequence[str] = (),
                   total_steps: int | None = None) -> optax.GradientTransformation:
    """The optimizer of ``config.optimizer`` over the whole params pytree.

    ``adam``: Adam, with ``weight_decay`` as a coupled L2 term added to the gradient (as
    PyTorch's ``Adam(weight_decay=...)``); ``adamw``: decoupled weight decay. Weight decay
    applies to kernels only. ``frozen_parts`` (e.g. ``("decoder",)`` in stages 1-2) get an
    update of exactly zero; the state structure does not depend on it, nor on ``total_steps``
    (the stage's step count, which a "cosine" ``schedule`` decays over).
    """
    oc = config.optimizer
    name = str(oc.name).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name must be one of {OPTIMIZERS}, got {oc.name!r}")
    unknown = set(frozen_parts) - set(PARTS)
    if unknown:
        raise ValueError(f"frozen_parts {sorted(unknown)} are not parts of the network {PARTS}")
    schedule = learning_rate_schedule(oc, total_steps)
    b1, b2, weight_decay = float(oc.b1), float(oc.b2), float(oc.weight_decay)
    if name == "adamw":
        tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask)
    elif weight_decay > 0:
        tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=_decay_mask),
                         optax.adam(schedule, b1=b1, b2=b2))
    else:
        tx = optax.adam(schedule, b1=b1, b2=b2)
    return optax.chain(tx, freeze_parts(frozen_parts))


def _check_matches(variables: dict, expected: dict, what: str) -> None:
    """Clear error when ``variables`` does not have the structure and shapes of ``expected``."""
    got_def, want_def = jax.tree.structure(variables), jax.tree.structure(expected)
    if got_def != want_def:
        raise ValueError(f"{what} do not match the network of this config: expected the tree\n{want_def}\n"
                         f"got\n{got_def}\n(were they saved with a different config.model?)")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(variables), jax.tree.leaves(expected)):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"{what}: {jax.tree_util.keystr(path)} has shape {tuple(a.shape)}, the network of "
                             f"this config expects {tuple(b.shape)} (different config.model?)")


def carry_over(previous_variables: dict, fresh_variables: dict,
               parts: Sequence[str] = ("encoder", "head")) -> dict:
    """``{"params", "batch_stats"}`` taking ``parts`` from the previous stage and the rest fresh.

    Stage 3 starts from stage 2's encoder and head with a fresh decoder:
    ``carry_over(stage2_variables, init_variables(model, rng, size))``.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"parts {sorted(unknown)} are not parts of the network {PARTS}")
    out = {}
    for collection in ("params", "batch_stats"):
        fresh = fresh_variables[collection]
        previous = previous_variables[collection]
        out[collection] = {name: previous[name] if name in parts and name in previous else tree
                           for name, tree in fresh.items()}
    _check_matches(out, fresh_variables, "carried-over variables")
    return out


def create_train_state(config: Any, model: PCAMNet, rng: jax.Array, *, init_params: dict | None = None) -> dict:
    """A fresh train state at step 0, from ``rng`` or from ``init_params`` ({"params", "batch_stats"}).

    The optimizer state is `make_optimizer(config)`'s, which has the same structure as the
    optimizer every stage's train step builds.
    """
    image_size = int(config.data.image_size)
    if init_params is None:
        variables = init_variables(model, rng, image_size)
    else:
        expected = jax.eval_shape(lambda: init_variables(model, rng, image_size))
        variables = {"params": init_params["params"], "batch_stats": init_params["batch_stats"]}
        _check_matches(variables, expected, "init_params")
    params = variables["params"]
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "batch_stats": variables["batch_stats"],
        # init's structure and values do not depend on the schedule (one step count either way),
        # so any step count serves a "cosine" schedule here; the train step builds the real one.
        "opt_state": make_optimizer(config, total_steps=int(config.optimizer.warmup_steps) + 1).init(params),
        "confidence": {
            "accuracy_ema": jnp.asarray(INITIAL_ACCURACY, jnp.float32),
            "val_accuracy": jnp.asarray(INITIAL_ACCURACY, jnp.float32),
        },
    }


def update_accuracy_ema(accuracy_ema: jax.Array, batch_accuracy: jax.Array, step: jax.Array,
                        decay: float) -> jax.Array:
    """Bias-corrected exponential moving average of the training accuracy.

    With ``t = step + 1`` (1 for the first batch of a stage) and decay ``d``:
    ``m_t = m_{t-1} + (1 - d) / (1 - d^t) * (a_t - m_{t-1})``. This is exactly Adam's debiased
    average ``sum_s (1 - d) d^(t-s) a_s / (1 - d^t)``: the first batch sets ``m_1 = a_1``, so
    the initial value plays no part and lambda is right from the first step of a stage.
    """
    t = step.astype(jnp.float32) + 1.0
    weight = (1.0 - decay) / (1.0 - decay ** t)
    return accuracy_ema + weight * (batch_accuracy - accuracy_ema)


# --- the state a stage starts from (created once, replicated over the mesh) ---------------------

# What `jax_disable_most_optimizations` sets, for programs that run once.
_RUN_ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def host_confidence(state: dict) -> dict[str, float]:
    return {k: float(np.asarray(v.addressable_data(0))) for k, v in state["confidence"].items()}


def local_variables(state: dict) -> dict:
    """Params and batch stats on this process's first device (for maps on process 0 only)."""
    device = jax.local_devices()[0]
    pick = lambda x: jax.device_put(x.addressable_data(0), device)
    return {"params": jax.tree.map(pick, state["params"]), "batch_stats": jax.tree.map(pick, state["batch_stats"])}


def state_factory(config, model, *, carried_parts: tuple[str, ...] = ()):
    """``create(rng, previous) -> state``: fresh, or ``previous``'s ``carried_parts`` and a fresh rest."""
    image_size = int(config.data.image_size)

    def create(rng, previous):
        if not carried_parts:
            return create_train_state(config, model, rng)
        fresh = init_variables(model, rng, image_size)
        variables = carry_over(previous, fresh, parts=carried_parts)
        return create_train_state(config, model, rng, init_params=variables)

    return create


def initial_state(stage: int, config, model, rng: jax.Array, workdir, mesh=None) -> dict:
    """The state a stage starts from, created by one jitted function (replicated over ``mesh``).

    A stage with a source (`Stage.source`: stage 2 with ``init_from="stage1"``, stage 3) reads
    that stage's best checkpoint (by ``train.best_metric``; its latest when none has metrics)
    and takes its carried parts, encoder and head, with their batch statistics; the decoder
    and the optimizer are fresh.
    """
    spec = stages_lib.get(stage)
    source = spec.source(config)
    previous = None
    if source is not None:
        previous_dir = checkpointing.stage_directory(workdir, source)
        if not previous_dir.is_dir():
            raise checkpointing.CheckpointError(
                f"stage {stage} starts from stage {source}, but {previous_dir} holds no checkpoint: "
                f"train stage {source} first (--stages {source},{stage})")
        previous_run = checkpointing.StageCheckpoints.from_config(workdir, source, config)
        try:
            sharding = (mesh_lib.replicated(mesh) if mesh is not None
                        else jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
            _, previous, _ = checkpointing.intact_variables(previous_run, "best", sharding)
        finally:
            previous_run.close()
    create = state_factory(config, model, carried_parts=spec.carried_parts if source is not None else ())
    out_shardings = mesh_lib.replicated(mesh) if mesh is not None else None
    # Runs once: compiled without XLA's expensive passes (on CPU the random initialisers take
    # seconds instead of tens of seconds to compile; values agree to float rounding).
    lowered = jax.jit(create, out_shardings=out_shardings).lower(rng, previous)
    return lowered.compile(compiler_options=_RUN_ONCE_COMPILER_OPTIONS)(rng, previous)


def abstract_state(config, model, mesh) -> dict:
    """Shapes, dtypes and (replicated) shardings of a stage's state, without computing it."""
    shapes = jax.eval_shape(state_factory(config, model), jax.random.key(0), None)
    sharding = mesh_lib.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


@jax.jit
def params_norm(params) -> jax.Array:
    """Global L2 norm of a parameter tree (the divergence guard's second signal)."""
    return jax.numpy.sqrt(sum(jax.numpy.sum(jax.numpy.square(x.astype(jax.numpy.float32)))
                              for x in jax.tree.leaves(params)))
