"""Optimizer: global-norm clipping, then AdamW on a linear warm-up + cosine-decay schedule."""

from __future__ import annotations

from typing import Any

import jax
import optax

# Parameters whose name ends like this are not weight-decayed (norm gains, biases).
NO_DECAY_NAMES = ('scale', 'bias')


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  """Linear warm-up to ``lr`` over ``warmup_steps``, cosine decay to ``lr * end_lr_ratio``."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.lr, warmup_steps=train_cfg.warmup_steps,
      decay_steps=max(train_cfg.total_steps, train_cfg.warmup_steps + 1),
      end_value=train_cfg.lr * train_cfg.end_lr_ratio)


def decay_mask(params: Any) -> Any:
  """True for matrices and embeddings, False for norm scales and biases."""
  def keep(path, _):
    last = path[-1]
    name = getattr(last, 'key', getattr(last, 'name', str(last)))
    return name not in NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  parts = []
  if train_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(train_cfg.clip_norm))
  parts.append(optax.adamw(learning_rate_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                           eps=train_cfg.eps, weight_decay=train_cfg.weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)
