"""Fields every job shares: mesh, logical-axis rules, optimizer, checkpointing, logging.

A job's ``get_config`` starts from :func:`base_config` and fills ``model``, ``data`` and the
task-specific fields. Everything here can be overridden from the command line, e.g.
``--config.mesh.ici.fsdp=4 --config.train.lr=1e-3``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

# One table decides the whole sharding layout (MaxText style): logical axis -> mesh axes.
# Parameters use the plain names, activations the ``act_`` names. Changing data/FSDP/tensor
# parallelism is an edit of the mesh sizes (or of this table), never of a model.
DEFAULT_RULES = (
    # parameters
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('mlp', 'tensor'),
    ('layers', None),
    # activations
    ('act_batch', ('data', 'fsdp')),
    ('act_length', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv_heads', 'tensor'),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = ''
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict()

  # Mesh over (data, fsdp, tensor). ICI: within a slice; DCN: across slices (multi-slice pods).
  # -1 means "all remaining devices"; at most one -1 per level.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.ici = ml_collections.ConfigDict({'data': 1, 'fsdp': -1, 'tensor': 1})
  c.mesh.dcn = ml_collections.ConfigDict({'data': 1, 'fsdp': 1, 'tensor': 1})
  c.sharding_rules = [list(r) if isinstance(r, tuple) else r for r in DEFAULT_RULES]

  c.train = ml_collections.ConfigDict()
  c.train.global_batch_size = 8       # sequences per optimizer step
  c.train.microbatch_size = 0         # sequences per forward/backward; 0 = no accumulation
  c.train.total_steps = 100
  c.train.optimizer = 'adamw'
  c.train.lr = 3e-4
  c.train.end_lr_ratio = 0.1          # cosine decays to lr * end_lr_ratio
  c.train.warmup_steps = 10
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.eps = 1e-8
  c.train.weight_decay = 0.1
  c.train.clip_norm = 1.0             # global-norm clipping; 0 disables
  c.train.on_nonfinite = 'error'      # 'error' stops naming the step; 'skip' drops the update
  # Start a new run from another run's parameters (fine-tuning, resolution change): its workdir,
  # the step (-1 = newest) and where its tree sits inside this model's ('' = the root).
  c.train.init_from = ''
  c.train.init_from_step = -1
  c.train.init_from_prefix = ''

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 10
  c.log.tensorboard = True
  c.log.progress_bar = True

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 500
  c.eval.batches = 8

  # Peak FLOP/s per device for MFU; 0 = look up the device kind (see launch/flops.py).
  c.peak_flops_per_device = 0.0
  return c


def set_field(config: ml_collections.ConfigDict, path: str, value: Any, source: str = 'config'
              ) -> None:
  """Sets the dotted ``path`` of ``config`` to ``value``. A string is converted to the field's
  type (``true``/``false`` for booleans; kept as a string where the field is unset); an unknown
  path is a ``KeyError`` and an unconvertible value a ``ValueError``, both naming ``source`` (the
  flag the value came from) and the path."""
  *parents, leaf = path.split('.')
  node = config
  for p in parents:
    if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
      raise KeyError(f'{source} {path}: the config has no field {p!r}')
    node = node[p]
  if leaf not in node:
    raise KeyError(f'{source} {path}: the config has no field {leaf!r}')
  old = node[leaf]
  if isinstance(value, str) and old is not None and not isinstance(old, str):
    if isinstance(old, bool):
      if value.lower() not in ('true', 'false'):
        raise ValueError(f'{source} {path}: expected true or false, got {value!r}')
      value = value.lower() == 'true'
    else:
      try:
        value = type(old)(value)
      except (TypeError, ValueError):
        raise ValueError(f'{source} {path}: expected a {type(old).__name__}, got {value!r}'
                         ) from None
  node[leaf] = value
