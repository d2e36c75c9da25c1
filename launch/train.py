r"""The one trainer: every trainable model of the project runs through :func:`train`.

  python -m launch.train --config configs/toto.py:tiny --workdir runs/toto_tiny \
      [--config.train.lr=1e-3 --config.mesh.ici.fsdp=4 ...]

Read top to bottom: config -> mesh -> sharded state -> data -> jitted step -> loop (logging, eval,
checkpoints, preemption). A task (``launch/tasks.py``) supplies the model, loss and data; this file
owns everything else. Starting the same command again resumes from the newest checkpoint in the
workdir, including the data iterator, so an interrupted run ends with exactly the parameters of an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from launch import checkpoint as ckpt_lib
from launch import distributed
from launch import flops as flops_lib
from launch import metrics as metrics_lib
from launch import optim
from launch import sharding as shard_lib
from launch import tasks as tasks_lib
from launch.sharding import ConfigError

# ------------------------------------------------------------------------------------------------
# Config validation
# ------------------------------------------------------------------------------------------------

_DTYPES = ('float32', 'bfloat16', 'float16')


def accumulation_steps(train_cfg) -> int:
  micro = train_cfg.microbatch_size or train_cfg.global_batch_size
  return train_cfg.global_batch_size // micro


def validate_config(config, task, devices, process_count: int = 1) -> None:
  """Checks everything that can be checked before compiling; errors name the field."""
  t = config.train
  if t.global_batch_size <= 0:
    raise ConfigError(f'train.global_batch_size must be positive, got {t.global_batch_size}')
  micro = t.microbatch_size or t.global_batch_size
  if micro < 0 or t.global_batch_size % micro:
    raise ConfigError(f'train.microbatch_size ({t.microbatch_size}) must divide '
                      f'train.global_batch_size ({t.global_batch_size})')
  if t.total_steps <= 0:
    raise ConfigError(f'train.total_steps must be positive, got {t.total_steps}')
  if not 0 <= t.warmup_steps < t.total_steps:
    raise ConfigError(f'train.warmup_steps ({t.warmup_steps}) must be in [0, train.total_steps='
                      f'{t.total_steps})')
  if not t.lr > 0:
    raise ConfigError(f'train.lr must be positive, got {t.lr}')
  for name in ('b1', 'b2'):
    if not 0 <= t[name] < 1:
      raise ConfigError(f'train.{name} must be in [0, 1), got {t[name]}')
  if not 0 <= t.end_lr_ratio <= 1:
    raise ConfigError(f'train.end_lr_ratio must be in [0, 1], got {t.end_lr_ratio}')
  if t.weight_decay < 0:
    raise ConfigError(f'train.weight_decay must be >= 0, got {t.weight_decay}')
  if not t.eps > 0:
    raise ConfigError(f'train.eps must be positive, got {t.eps}')
  if t.clip_norm < 0:
    raise ConfigError(f'train.clip_norm must be >= 0 (0 disables clipping), got {t.clip_norm}')
  if t.on_nonfinite not in ('error', 'skip'):
    raise ConfigError(f"train.on_nonfinite must be 'error' or 'skip', got {t.on_nonfinite!r}")
  if config.model.get('dtype', 'float32') not in _DTYPES:
    raise ConfigError(f'model.dtype must be one of {_DTYPES}, got {config.model.dtype!r}')
  from toto_jax.model import REMAT_POLICIES  # the one table of remat policies
  if config.model.get('remat_policy', 'none') not in REMAT_POLICIES:
    raise ConfigError(f'model.remat_policy must be one of {sorted(REMAT_POLICIES)}, '
                      f'got {config.model.remat_policy!r}')
  for field in ('checkpoint.every_steps', 'checkpoint.keep', 'log.every_steps'):
    section, key = field.split('.')
    if config[section][key] < 1:
      raise ConfigError(f'{field} must be >= 1, got {config[section][key]}')
  if config.eval.every_steps < 0 or config.eval.batches < 0:
    raise ConfigError('eval.every_steps and eval.batches must be >= 0 (0 disables eval)')

  # Mesh and batch layout.
  ici, dcn = shard_lib.mesh_shape(config.mesh, len(devices), shard_lib.num_slices_of(devices))
  sizes = dict(zip(shard_lib.MESH_AXES, (i * d for i, d in zip(ici, dcn))))
  rules = shard_lib.rules_of(config)
  batch_target = dict(rules).get('act_batch')
  batch_axes = batch_target if isinstance(batch_target, tuple) else (batch_target,)
  batch_shards = int(np.prod([sizes[a] for a in batch_axes if a is not None]))
  if micro % batch_shards:
    raise ConfigError(f'train.microbatch_size ({micro}) must be divisible by the {batch_shards} '
                      f'batch shards of the mesh ({" x ".join(a for a in batch_axes if a)}: '
                      f'{ {a: sizes[a] for a in batch_axes if a} })')
  if micro % process_count:
    raise ConfigError(f'train.microbatch_size ({micro}) must be divisible by the number of '
                      f'processes ({process_count})')
  task.validate()


def apply_epoch_schedule(config, task) -> None:
  """``train.epochs`` > 0: sets ``train.total_steps`` (and ``train.warmup_steps`` from
  ``train.warmup_epochs``) from the task's ``examples_per_epoch()`` and the global batch."""
  t = config.train
  epochs = t.get('epochs', 0) or 0
  if not epochs:
    return
  if epochs < 0:
    raise ConfigError(f'train.epochs must be >= 0 (0 = use train.total_steps), got {epochs}')
  if not hasattr(task, 'examples_per_epoch'):
    raise ConfigError(f'train.epochs is set but task {config.task!r} does not count its examples '
                      f'per epoch; set train.total_steps instead')
  steps_per_epoch = task.examples_per_epoch() / t.global_batch_size
  t.total_steps = max(1, int(round(epochs * steps_per_epoch)))
  t.warmup_steps = min(int(round(t.get('warmup_epochs', 0) * steps_per_epoch)),
                       t.total_steps - 1)


def check_divisible(abstract_params: Any, shardings: Any) -> None:
  """Every sharded parameter dimension must split evenly; errors name the parameter."""
  def check(path, a, s):
    for dim, (n, axes) in enumerate(zip(a.shape, s.spec)):
      if axes is None:
        continue
      names = axes if isinstance(axes, tuple) else (axes,)
      ways = int(np.prod([s.mesh.shape[x] for x in names]))
      if n % ways:
        raise ConfigError(f'parameter {jax.tree_util.keystr(path)} dimension {dim} ({n}) cannot '
                          f'be split {ways} ways over mesh axes {names}; change the mesh sizes '
                          f'(config.mesh) or config.sharding_rules')
  jax.tree_util.tree_map_with_path(check, abstract_params, shardings)


# ------------------------------------------------------------------------------------------------
# Train state and step
# ------------------------------------------------------------------------------------------------

def make_state_fns(task, tx):
  """``init_state(rng) -> state``: params (unboxed), optimizer state and the step counters."""
  def init_state(rng):
    params = shard_lib.unbox(task.init(rng))
    state = {
        'step': jnp.zeros((), jnp.int32),
        'params': params,
        'opt_state': tx.init(params),
        'nonfinite_count': jnp.zeros((), jnp.int32),
        'first_nonfinite_step': jnp.full((), -1, jnp.int32),
    }
    if has_model_state(task):
      state['model_state'] = shard_lib.unbox(task.init_model_state(rng))
    return state
  return init_state


def make_tx(task, train_cfg) -> optax.GradientTransformationExtraArgs:
  """The optimizer, with the task's per-parameter learning-rate multipliers when it has them
  (``task.lr_scales(params)``: layer-wise decay, muP)."""
  scales = None
  if hasattr(task, 'lr_scales'):
    abstract = shard_lib.unbox(jax.eval_shape(task.init, jax.random.key(0)))
    scales = task.lr_scales(abstract)
  return optim.make_optimizer(train_cfg, scales)


def init_from_pretrained(params: Any, workdir: str, step: int | None = None,
                         prefix: str = '') -> tuple[Any, dict]:
  """``params`` with every array that a pre-trained run holds copied in (placed with the same
  sharding); the rest keeps its fresh initialisation. ``prefix`` ('a/b') is where the pre-trained
  tree sits inside this model's tree. A shape mismatch is an error naming the parameter;
  nothing in common is an error too.
  """
  from flax import traverse_util
  loaded = ckpt_lib.load(workdir, None if step is None or step < 0 else step, items=('params',))
  lead = prefix.strip('/') + '/' if prefix.strip('/') else ''
  source_tree = _in_layer_layout_of(loaded['params'], params, lead)
  source = traverse_util.flatten_dict(source_tree, sep='/')
  target = traverse_util.flatten_dict(params, sep='/')
  copied, unused = [], []
  for name, value in source.items():
    key = lead + name
    if key not in target:
      unused.append(name)
      continue
    if tuple(target[key].shape) != tuple(value.shape):
      raise ConfigError(f'train.init_from: parameter {key!r} has shape {tuple(value.shape)} in '
                        f'{workdir} but {tuple(target[key].shape)} in this model')
    target[key] = jax.device_put(np.asarray(value, target[key].dtype), target[key].sharding)
    copied.append(key)
  if not copied:
    raise ConfigError(f'train.init_from: no parameter of {workdir} (step {loaded["step"]}) '
                      f'matches this model (train.init_from_prefix={prefix!r})')
  fresh = sorted(set(target) - set(copied))
  report = {'step': loaded['step'], 'copied': len(copied), 'fresh': fresh, 'unused': unused}
  return traverse_util.unflatten_dict(target, sep='/'), report


def _in_layer_layout_of(source: Any, target: Any, lead: str) -> Any:
  """``source`` params with their transformer layers stacked or unrolled as the ``target``
  subtree at ``lead`` has them (``model.scan_layers`` may differ between pre-training on a pod
  and fine-tuning on one machine)."""
  from toto_jax.model import is_unrolled, stack_layers, unstack_layers
  for part in filter(None, lead.split('/')):
    target = target.get(part, {}) if isinstance(target, dict) else {}
  if not (isinstance(source, dict) and 'layers' in source and isinstance(target, dict)
          and isinstance(target.get('layers'), dict)):
    return source
  return unstack_layers(source) if is_unrolled(target['layers']) else stack_layers(source)


def check_resumable_layout(workdir: str, config) -> None:
  """A workdir's checkpoints restore only into the layer layout they were written in; a run
  that changed ``model.scan_layers`` gets this error instead of every checkpoint being reported
  unreadable."""
  from toto_jax.model import scans_layers
  path = os.path.join(workdir, 'config.json')
  steps = ckpt_lib.saved_steps(workdir)
  if not steps or not os.path.exists(path) or 'model' not in config:
    return
  saved = ckpt_lib.read_config_dict(workdir).get('model', {}).get('scan_layers', True)
  wanted = scans_layers(config.model)
  if bool(saved) != wanted:
    raise ConfigError(
        f'model.scan_layers is {wanted} but the checkpoints in {workdir} (steps {steps}) were '
        f'written with {bool(saved)}: resume with --config.model.scan_layers={bool(saved)}, or '
        f'start a new workdir with --config.train.init_from={workdir} (which converts the '
        f'layout)')


def has_model_state(task) -> bool:
  """Whether the task keeps non-trainable variables (EMA codebooks, running statistics)."""
  return hasattr(task, 'init_model_state')


def state_shardings(task, tx, mesh, rules, rng) -> tuple[Any, Any]:
  """(abstract state, its shardings), derived from the logical names on the parameters."""
  abstract_boxed = jax.eval_shape(task.init, rng)
  param_specs = nn.get_partition_spec(abstract_boxed)
  param_shardings = nn.logical_to_mesh_sharding(param_specs, mesh, rules)
  abstract_params = shard_lib.unbox(abstract_boxed)
  check_divisible(abstract_params, param_shardings)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  rep = shard_lib.replicated(mesh)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt, param_shardings,
      transform_non_params=lambda _: rep, is_leaf=lambda x: isinstance(x, NamedSharding))
  abstract_state = jax.eval_shape(make_state_fns(task, tx), rng)
  shardings = {'step': rep, 'params': param_shardings, 'opt_state': opt_shardings,
               'nonfinite_count': rep, 'first_nonfinite_step': rep}
  if has_model_state(task):
    boxed = jax.eval_shape(task.init_model_state, rng)
    shardings['model_state'] = nn.logical_to_mesh_sharding(
        nn.get_partition_spec(boxed), mesh, rules)
  return abstract_state, shardings


def _loss_with_state(task):
  """``f(params, batch, rng, model_state) -> (loss_sum, (aux, new_model_state))`` for any task.

  A task with non-trainable variables takes them as a fourth argument and returns the updated
  ones as ``aux['model_state']``; for every other task the state is an empty dict passed through.
  """
  if not has_model_state(task):
    def loss(params, batch, rng, model_state):
      loss_sum, aux = task.loss(params, batch, rng)
      return loss_sum, (aux, model_state)
    return loss

  def loss(params, batch, rng, model_state):
    loss_sum, aux = task.loss(params, batch, rng, model_state)
    aux = dict(aux)
    return loss_sum, (aux, aux.pop('model_state'))
  return loss


def make_train_step(task, tx, param_shardings):
  """One optimizer step over ``batch`` shaped ``[accumulation, microbatch, ...]``.

  A step whose loss or gradient norm is not finite is never applied (parameters, optimizer state
  and model state stay as they were); it is counted and its number recorded so the host can stop
  the run naming it (``train.on_nonfinite='error'``) or go on (``'skip'``). Non-trainable model
  state (e.g. an EMA codebook) is threaded through the microbatches in order.
  """
  loss_fn = _loss_with_state(task)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch, rng):
    params = state['params']
    model_state = state.get('model_state', {})
    step_rng = jax.random.fold_in(rng, state['step'])

    def micro(carry, xs):
      grads_acc, sums, model_state = carry
      index, microbatch = xs
      (loss_sum, (aux, model_state)), grads = grad_fn(
          params, microbatch, jax.random.fold_in(step_rng, index), model_state)
      grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
      grads_acc = jax.lax.with_sharding_constraint(grads_acc, param_shardings)
      sums = {k: sums[k] + v for k, v in {'loss': loss_sum, **aux}.items()}
      return (grads_acc, sums, model_state), None

    accum = jax.tree_util.tree_leaves(batch)[0].shape[0]
    if accum == 1:  # no accumulation buffer: one pass over the parameters fewer
      microbatch = jax.tree_util.tree_map(lambda x: x[0], batch)
      (loss_sum, (aux, new_model_state)), grads = grad_fn(
          params, microbatch, jax.random.fold_in(step_rng, 0), model_state)
      sums = {'loss': loss_sum, **aux}
    else:
      zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
      aux_shape = jax.eval_shape(
          lambda b: loss_fn(params, b, step_rng, model_state)[1][0],
          jax.tree_util.tree_map(lambda x: x[0], batch))
      sums0 = {'loss': jnp.zeros((), jnp.float32),
               **{k: jnp.zeros(v.shape, v.dtype) for k, v in aux_shape.items()}}
      (grads, sums, new_model_state), _ = jax.lax.scan(
          micro, (zeros, sums0, model_state), (jnp.arange(accum), batch))
    weight = jnp.maximum(sums['weight'], 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / weight, grads)
    loss = sums['loss'] / weight
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply(operands):
      params, opt_state, grads, _, new_model_state = operands
      updates, new_opt = tx.update(grads, opt_state, params, grad_norm=grad_norm)
      return optax.apply_updates(params, updates), new_opt, new_model_state

    def skip(operands):
      params, opt_state, _, model_state, _ = operands
      return params, opt_state, model_state

    new_params, new_opt, new_model_state = jax.lax.cond(
        finite, apply, skip, (params, state['opt_state'], grads, model_state, new_model_state))
    step = state['step']
    new_state = {
        'step': step + 1,
        'params': new_params,
        'opt_state': new_opt,
        'nonfinite_count': state['nonfinite_count'] + (~finite).astype(jnp.int32),
        'first_nonfinite_step': jnp.where(
            (state['first_nonfinite_step'] < 0) & ~finite, step + 1, state['first_nonfinite_step']),
    }
    if 'model_state' in state:
      new_state['model_state'] = new_model_state
    metrics = {'train/loss': loss, 'train/grad_norm': grad_norm,
               'train/param_norm': optax.tree.norm(params)}
    for k, v in sums.items():
      if k not in ('loss', 'weight'):
        metrics[f'train/{k}'] = v / weight
    return new_state, metrics

  return train_step


def jit_train_step(task, tx, shardings: Any, batch_shardings: dict, replicated: Any):
  """The compiled step every caller uses (the loop, ``launch.bench``, ``launch.aot``): state and
  batch in their shardings, the rng and metrics replicated, the state donated."""
  return jax.jit(make_train_step(task, tx, shardings['params']),
                 in_shardings=(shardings, batch_shardings, replicated),
                 out_shardings=(shardings, replicated), donate_argnums=(0,))


def make_eval_step(task):
  loss_fn = _loss_with_state(task)

  def eval_step(params, model_state, batch):
    loss_sum, (aux, _) = loss_fn(params, batch, jax.random.key(0), model_state)
    return {'loss': loss_sum, **aux}
  return eval_step


# ------------------------------------------------------------------------------------------------
# Data to devices
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class BatchPlacer:
  """Turns per-process numpy batches into global arrays laid out ``[accumulation, micro, ...]``."""
  mesh: Any
  rules: Any
  axes: dict
  accumulation: int
  global_micro: int

  def sharding(self, name: str, leading: tuple = (None,)) -> NamedSharding:
    return shard_lib.logical_sharding(self.mesh, self.rules, leading + tuple(self.axes[name]))

  def __call__(self, local: dict) -> dict:
    out = {}
    for name, x in local.items():
      x = np.asarray(x)
      local_micro = x.shape[0] // self.accumulation
      x = x.reshape((self.accumulation, local_micro) + x.shape[1:])
      shape = (self.accumulation, self.global_micro) + x.shape[2:]
      out[name] = jax.make_array_from_process_local_data(self.sharding(name), x, shape)
    return out

  def eval_batch(self, local: dict) -> dict:
    out = {}
    for name, x in local.items():
      x = np.asarray(x)
      shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
      out[name] = jax.make_array_from_process_local_data(self.sharding(name, ()), x, shape)
    return out


# ------------------------------------------------------------------------------------------------
# Preemption
# ------------------------------------------------------------------------------------------------

class Preemption:
  """Sets a flag on SIGTERM (a preempted TPU VM, ``scancel``, ``docker stop``) and lets all hosts
  agree on it so they save the same checkpoint before exiting."""

  def __init__(self):
    self.requested = False
    self._previous = None
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler
      self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
    return bool(np.any(flags))

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

class NonFiniteError(FloatingPointError):
  pass


def train(config, workdir: str, *, devices=None, stop_after_steps: int | None = None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming when it holds a checkpoint); returns a summary.

  ``stop_after_steps`` ends the session early after that many steps of *this* call (with a
  checkpoint), as a preemption would; tests use it to interrupt and resume.
  """
  distributed.maybe_initialize()
  task = tasks_lib.get_task(config)
  devices = list(jax.devices() if devices is None else devices)
  apply_epoch_schedule(config, task)
  validate_config(config, task, devices, jax.process_count())

  mesh = shard_lib.make_mesh(config.mesh, devices)
  rules = shard_lib.rules_of(config)
  t = config.train
  accumulation = accumulation_steps(t)
  micro = t.global_batch_size // accumulation
  check_resumable_layout(workdir, config)
  ckpt_lib.write_config(workdir, config)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # --- state, created already sharded ---------------------------------------------------------
    tx = make_tx(task, t)
    rng = jax.random.key(config.seed)
    init_rng, step_rng = jax.random.split(rng)
    abstract_state, shardings = state_shardings(task, tx, mesh, rules, init_rng)
    rep = shard_lib.replicated(mesh)

    # --- data ------------------------------------------------------------------------------------
    per_process = t.global_batch_size // jax.process_count()
    train_ds = task.train_data(seed=config.seed, process_index=jax.process_index(),
                               process_count=jax.process_count(), batch_size=per_process)
    data_iter = iter(train_ds)
    placer = BatchPlacer(mesh, rules, task.batch_axes(), accumulation, micro)

    # --- resume or init ---------------------------------------------------------------------------
    manager = ckpt_lib.make_manager(workdir, config.checkpoint.keep, config.checkpoint.async_save)
    restored = ckpt_lib.restore_latest(
        manager, ckpt_lib.abstract_with_shardings(abstract_state, shardings), data_iter)
    if restored is None:
      state = jax.jit(make_state_fns(task, tx), out_shardings=shardings)(init_rng)
      if t.get('init_from'):
        state['params'], report = init_from_pretrained(
            state['params'], t.init_from, t.get('init_from_step', -1), t.get('init_from_prefix', ''))
        print(f"[train] initialised {report['copied']} parameter arrays from {t.init_from} "
              f"(step {report['step']}); fresh: {report['fresh'] or 'none'}; "
              f"not used: {report['unused'] or 'none'}", flush=True)
      start_step = 0
    else:
      start_step, state = restored
    start_step = int(jax.device_get(state['step']))

    # --- compiled functions -----------------------------------------------------------------------
    batch_shardings = {k: placer.sharding(k) for k in task.batch_axes()}
    train_step = jit_train_step(task, tx, shardings, batch_shardings, rep)
    eval_step = jax.jit(make_eval_step(task), in_shardings=(
        shardings['params'], shardings.get('model_state', rep),
        {k: placer.sharding(k, ()) for k in task.batch_axes()}),
        out_shardings=rep)
    eval_batches = []
    if config.eval.every_steps and config.eval.batches:
      eval_batches = list(task.eval_data(
          process_index=jax.process_index(), process_count=jax.process_count(),
          batch_size=micro // jax.process_count(), num_batches=config.eval.batches))

    # --- accounting -------------------------------------------------------------------------------
    tokens_per_step = t.global_batch_size * task.tokens_per_example()
    flops_per_step = t.global_batch_size * task.train_flops_per_example()
    peak, peak_source = flops_lib.device_peak_flops(devices[0], config.model.get('dtype', 'float32'))
    total_peak = peak if devices[0].platform == 'cpu' else peak * len(devices)
    if config.peak_flops_per_device:
      total_peak, peak_source = config.peak_flops_per_device * len(devices), 'config'

    log = metrics_lib.MetricsLogger(workdir, t.total_steps, start_step,
                                    tensorboard=config.log.tensorboard,
                                    progress_bar=config.log.progress_bar)
    log.message(f'[train] task={config.task} mesh {shard_lib.describe(mesh)} '
                f'({len(devices)} {devices[0].platform} devices, {jax.process_count()} processes); '
                f'global batch {t.global_batch_size} = {accumulation} x {micro}; '
                f'{tokens_per_step} tokens/step; '
                + (f'resumed at step {start_step}' if restored else 'fresh start'))

    preemption = Preemption()
    summary = {'workdir': os.path.abspath(workdir), 'start_step': start_step}

    def run_eval(step: int) -> dict:
      sums: dict[str, float] = {}
      for b in eval_batches:
        out = jax.device_get(eval_step(state['params'], state.get('model_state', {}),
                                       placer.eval_batch(b)))
        for k, v in out.items():
          sums[k] = sums.get(k, 0.0) + float(v)
      w = max(sums.get('weight', 1.0), 1.0)
      result = {f'eval/{k}': v / w for k, v in sums.items() if k != 'weight'}
      log.write(step, result)
      return result

    def check_finite() -> None:
      count, first = jax.device_get((state['nonfinite_count'], state['first_nonfinite_step']))
      if count and t.on_nonfinite == 'error':
        raise NonFiniteError(
            f'non-finite loss or gradient at step {int(first)} (the update was not applied; the '
            f'last checkpoint in {ckpt_lib.checkpoint_dir(workdir)} is clean). Lower train.lr, '
            f'check the data, or set --config.train.on_nonfinite=skip to skip such steps.')

    step = start_step
    last_time, last_step = None, step
    # On resume, start from the last logged value of every metric (a finished run re-run then
    # still reports its final loss).
    last_metrics: dict = dict(log.latest)
    try:
      while step < t.total_steps:
        batch = placer(next(data_iter))
        state, metrics = train_step(state, batch, step_rng)
        step += 1
        if last_time is None:  # exclude compilation from throughput
          jax.block_until_ready(metrics)
          last_time, last_step = time.perf_counter(), step
        stop = preemption.should_stop() or (stop_after_steps is not None
                                             and step - start_step >= stop_after_steps)
        if step % config.log.every_steps == 0 or step == t.total_steps or stop:
          m = {k: float(v) for k, v in jax.device_get(metrics).items()}
          check_finite()
          now = time.perf_counter()
          if step > last_step:
            dt = (now - last_time) / (step - last_step)
            m.update({'perf/step_time_s': dt, 'perf/tokens_per_s': tokens_per_step / dt,
                      'perf/flops_per_s': flops_per_step / dt,
                      'perf/mfu': flops_per_step / dt / total_peak})
          last_time, last_step = now, step
          # Skipped steps do not advance the optimizer's schedule: report the rate it last used.
          skipped = int(jax.device_get(state['nonfinite_count']))
          m['train/lr'] = float(optim.learning_rate_schedule(t)(max(step - skipped - 1, 0)))
          m['train/skipped_steps'] = float(skipped)
          log.write(step, m)
          last_metrics.update(m)
        if eval_batches and config.eval.every_steps and (
            step % config.eval.every_steps == 0 or step == t.total_steps):
          last_metrics.update(run_eval(step))
        log.progress(step, last_metrics)
        if step % config.checkpoint.every_steps == 0 or step == t.total_steps or stop:
          check_finite()
          ckpt_lib.save(manager, step, state, data_iter, force=True)
        if stop:
          log.message(f'[train] stopping at step {step} '
                      f'({"SIGTERM" if preemption.requested else "requested"}); '
                      f'checkpoint saved, rerun the same command to resume')
          summary['preempted'] = True
          break
    finally:
      manager.wait_until_finished()
      preemption.restore()
      log.close()
      manager.close()

    summary.update({'step': step, 'total_steps': t.total_steps, 'metrics': last_metrics,
                    'peak_flops': total_peak, 'peak_source': peak_source,
                    'checkpoints': ckpt_lib.checkpoint_dir(workdir),
                    'metrics_file': os.path.join(os.path.abspath(workdir), 'metrics.jsonl')})
    summary['final_params'] = state['params']
    if 'model_state' in state:
      summary['final_model_state'] = state['model_state']
    return summary


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def main(argv) -> None:
  from absl import flags
  del argv
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  try:
    summary = train(config, workdir)
  except ConfigError as e:
    print(f'config error: {e}', file=sys.stderr)
    sys.exit(2)
  except NonFiniteError as e:
    print(f'training stopped: {e}', file=sys.stderr)
    sys.exit(3)
  if jax.process_index() == 0:
    m = summary['metrics']
    state = 'stopped' if summary.get('preempted') else 'done'
    print(f"[train] {state} at step {summary['step']}/{summary['total_steps']}: "
          f"loss {m.get('train/loss', float('nan')):.4f}"
          + (f", eval loss {m['eval/loss']:.4f}" if 'eval/loss' in m else '')
          + f"\n  metrics:     {summary['metrics_file']}\n  checkpoints: {summary['checkpoints']}")


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/FILE.py:VARIANT', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and TensorBoard.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
