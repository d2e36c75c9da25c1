"""LART as a trainer task (``config.task = 'lart'``): masked token modelling with BCE over the
AVA classes on the person of interest's supervised tokens (DESIGN section 7).

Per step: a random ``model.mask_ratio`` of the detected tokens (all people) is replaced by the
mask token; the model runs with dropout / drop path; the loss is the binary cross-entropy summed
over the 60 evaluated classes on every token of the person of interest that is detected, inside
the tracklet and labelled, weighted ``loss.gt_weight`` (ground truth) or ``loss.pseudo_weight``
(pseudo-labels), and normalised by the summed weights (``aux['weight']``). Masked tokens are
supervised like the others. With ``model.pseudo_classes > 0`` pseudo-labelled tokens train a
second head over ``data.num_classes`` (80) classes instead of the main head.

The trainer's eval hook computes the same loss with a fixed rng (masking and dropout included),
so ``eval/loss`` is comparable across steps; the AVA mAP comes from ``launch/evaluate.py``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lart_jax import data as lart_data
from lart_jax.model import HEAD_NAMES, MAX_FRAMES, POSE_DIM, Lart, random_token_mask
from toto_jax import attention

def evaluated_columns() -> np.ndarray:
  """0-based columns of an 80-wide AVA label vector that hold the 60 evaluated classes."""
  from lart_jax import ava
  return np.asarray(ava.EVALUATED_IDS, np.int64) - 1


def param_counts(model_cfg, num_people: int = 2, num_frames: int = 2) -> dict[str, int]:
  """Total and matmul (everything but the mask token and biases / norms) parameter counts."""
  model = Lart(model_cfg)
  da = int(model_cfg.appearance_dim)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, num_frames, num_people, POSE_DIM)),
      jnp.zeros((1, num_frames, num_people, da)), jnp.ones((1, num_frames, num_people), bool)))
  # Partitioned boxes are pytree nodes: leaves are the arrays, their paths end in '.value'.
  leaves = jax.tree_util.tree_leaves_with_path(shapes['params'])
  total = int(sum(np.prod(x.shape) for _, x in leaves))
  matmul = int(sum(np.prod(x.shape) for p, x in leaves
                   if any(getattr(k, 'key', None) == 'kernel' for k in p)))
  return {'total': total, 'matmul': matmul}


def token_weights(batch: Mapping[str, jax.Array], gt_weight: float, pseudo_weight: float
                  ) -> tuple[jax.Array, jax.Array]:
  """(ground-truth weights, pseudo-label weights), each ``[B, T]``: non-zero on the person of
  interest's detected, valid tokens of that label level."""
  sup = batch['detected'][:, :, 0] & batch['valid']
  level = batch['label_level']
  gt = jnp.where(sup & (level == 2), gt_weight, 0.0).astype(jnp.float32)
  pseudo = jnp.where(sup & (level == 1), pseudo_weight, 0.0).astype(jnp.float32)
  return gt, pseudo


class LartTask:
  """Plugs :class:`lart_jax.model.Lart` and the tracklet pipeline into ``launch.train``."""

  def __init__(self, config):
    self.config = config
    self.model = Lart(config.model)

  # --- configuration -------------------------------------------------------------------------
  def validate(self) -> None:
    from launch.sharding import ConfigError
    m, d, c = self.config.model, self.config.data, self.config
    try:
      lart_data.validate_data_config(d)
    except ValueError as e:  # the data module's messages name the data.* field
      raise ConfigError(str(e)) from None
    if m.arch != 'gpt2' or m.causal:
      raise ConfigError(f"model.arch must be 'gpt2' with model.causal False for LART "
                        f"(got arch={m.arch!r}, causal={m.causal})")
    if m.dim % m.num_heads:
      raise ConfigError(f'model.dim ({m.dim}) must be divisible by model.num_heads ({m.num_heads})')
    if m.dim % 4:
      raise ConfigError(f'model.dim ({m.dim}) must be divisible by 4 (2D sine-cosine positions)')
    if (m.num_kv_heads or m.num_heads) != m.num_heads:
      raise ConfigError('model.num_kv_heads must be 0 or model.num_heads for LART')
    if m.get('attention_impl') in attention.CAUSAL_ONLY:
      raise ConfigError(f"model.attention_impl={m.attention_impl!r} is causal-only; LART "
                        "attention is bidirectional with a key mask")
    if int(m.appearance_dim) != int(d.appearance_dim):
      raise ConfigError(f'model.appearance_dim ({m.appearance_dim}) must equal '
                        f'data.appearance_dim ({d.appearance_dim}); pose-only variants use 0')
    if d.get('max_frames', MAX_FRAMES) > MAX_FRAMES:
      raise ConfigError(f'data.max_frames ({d.max_frames}) must be at most {MAX_FRAMES}')
    if m.num_classes != 60:
      raise ConfigError(f'model.num_classes must be 60 (the AVA evaluated classes), got '
                        f'{m.num_classes}')
    if m.pseudo_classes not in (0, d.num_classes):
      raise ConfigError(f'model.pseudo_classes ({m.pseudo_classes}) must be 0 (no pseudo head) '
                        f'or data.num_classes ({d.num_classes})')
    for name in ('mask_ratio', 'dropout', 'drop_path'):
      if not 0.0 <= m[name] < 1.0:
        raise ConfigError(f'model.{name} must be in [0, 1), got {m[name]}')
    if m.embed_hidden < 1:
      raise ConfigError(f'model.embed_hidden must be >= 1, got {m.embed_hidden}')
    lw = c.loss
    if lw.gt_weight < 0 or lw.pseudo_weight < 0 or lw.gt_weight + lw.pseudo_weight <= 0:
      raise ConfigError(f'loss.gt_weight ({lw.gt_weight}) and loss.pseudo_weight '
                        f'({lw.pseudo_weight}) must be >= 0 and not both 0')
    decay = c.train.get('layer_decay', 0.0)
    if not 0.0 <= decay <= 1.0:
      raise ConfigError(f'train.layer_decay must be in [0, 1] (0 = off), got {decay}')
    ev = c.get('evaluate', None)
    if ev is not None and ev.average_frames < 1:
      raise ConfigError(f'evaluate.average_frames must be >= 1, got {ev.average_frames}')

  # --- model -----------------------------------------------------------------------------------
  def init(self, rng: jax.Array) -> Any:
    d = self.config.data
    n = d.num_people
    return self.model.init(rng, jnp.zeros((1, 2, n, POSE_DIM)),
                           jnp.zeros((1, 2, n, int(d.appearance_dim))),
                           jnp.ones((1, 2, n), bool))['params']

  def lr_scales(self, params: Any) -> Any:
    """Layer-wise decay ``train.layer_decay`` (fine-tuning); 1 everywhere when it is 0."""
    from launch.optim import layer_decay_scales
    decay = self.config.train.get('layer_decay', 0.0)
    if not decay:
      return jax.tree_util.tree_map(lambda _: np.float32(1.0), params)
    return layer_decay_scales(params, decay, self.config.model.num_layers, head=HEAD_NAMES)

  def forward(self, params, batch: Mapping[str, jax.Array], rng: jax.Array | None = None
              ) -> tuple[dict[str, jax.Array], jax.Array]:
    """(model outputs, the mask used): training mode (masking, dropout) with ``rng``,
    inference (nothing masked, deterministic) without."""
    if rng is None:
      masked = jnp.zeros_like(batch['detected'])
      out = self.model.apply({'params': params}, batch['pose'], batch['appearance'],
                             batch['detected'], masked, deterministic=True)
      return out, masked
    mask_rng, dropout_rng = jax.random.split(rng)
    masked = random_token_mask(mask_rng, batch['detected'], self.config.model.mask_ratio)
    out = self.model.apply({'params': params}, batch['pose'], batch['appearance'],
                           batch['detected'], masked, deterministic=False,
                           rngs={'dropout': dropout_rng})
    return out, masked

  def loss(self, params, batch: Mapping[str, jax.Array], rng: jax.Array):
    out, masked = self.forward(params, batch, rng)
    lw = self.config.loss
    gt_w, pseudo_w = token_weights(batch, lw.gt_weight, lw.pseudo_weight)
    labels = batch['labels'].astype(jnp.float32)
    labels60 = labels if labels.shape[-1] == 60 else labels[..., evaluated_columns()]
    bce = optax.sigmoid_binary_cross_entropy(out['logits'][:, :, 0], labels60).sum(-1)
    if 'pseudo_logits' in out:  # pseudo-labels train their own head over the larger space
      bce_pseudo = optax.sigmoid_binary_cross_entropy(out['pseudo_logits'][:, :, 0],
                                                      labels).sum(-1)
    else:
      bce_pseudo = bce
    loss_sum = (gt_w * bce).sum() + (pseudo_w * bce_pseudo).sum()
    poi_masked = masked[:, :, 0].astype(jnp.float32) * (gt_w + pseudo_w)
    # masked_share: logged / weight = the share of the supervision on masked tokens.
    return loss_sum, {'weight': gt_w.sum() + pseudo_w.sum(), 'masked_share': poi_masked.sum()}

  def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
    return {'pose': ('act_batch', None, None, None),
            'appearance': ('act_batch', None, None, None),
            'detected': ('act_batch', None, None), 'labels': ('act_batch', None, None),
            'label_level': ('act_batch', None), 'valid': ('act_batch', None),
            'frame_ids': ('act_batch', None), 'bbox': ('act_batch', None, None),
            'video_index': ('act_batch',), 'track_index': ('act_batch',)}

  # --- data ------------------------------------------------------------------------------------
  def train_data(self, *, seed: int, process_index: int, process_count: int, batch_size: int):
    return lart_data.build_train_dataset(self.config.data, seed=seed,
                                         process_index=process_index,
                                         process_count=process_count, batch_size=batch_size)

  def eval_data(self, *, process_index: int, process_count: int, batch_size: int,
                num_batches: int) -> Iterable[Mapping[str, Any]]:
    return lart_data.build_eval_examples(self.config.data, process_index=process_index,
                                         process_count=process_count, batch_size=batch_size,
                                         num_batches=num_batches)

  def examples_per_epoch(self) -> int:
    """Training examples in one pass over the tracklets (``train.epochs`` schedules)."""
    return lart_data.num_train_examples(self.config.data)

  # --- accounting ------------------------------------------------------------------------------
  def tokens_per_example(self) -> int:
    return int(self.config.data.max_frames * self.config.data.num_people)

  def train_flops_per_example(self) -> float:
    from launch.flops import decoder_train_flops_per_token
    m = self.config.model
    length = self.tokens_per_example()
    per_token = decoder_train_flops_per_token(param_counts(m)['matmul'], m.num_layers, length,
                                              m.dim, causal=False)
    return per_token * length
