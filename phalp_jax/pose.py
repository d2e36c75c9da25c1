"""PHALP's pose predictor: a small transformer over a tracklet's pose history (seed 000, ch. 2).

HMMR-like temporal pose model (section 2.3, "Pose"; SupMat: a transformer with one layer and one
head, the residual regressed in feature space): given the last ``H`` pose observations of a
tracklet with their frame times, it predicts the pose at a target frame up to ``c = 12`` frames
after the last observation.

* Tokens are the observed poses, as offsets from the last observation, projected to
  ``model.dim`` and modulated (scale and shift) by sine-cosine encodings of the slot's time offset
  from the target ``t_i - target_t`` and from the last observation. Missing frames are simply
  absent: their slots are ``valid=False`` and masked out of attention as keys, so observations
  keep their real time offsets and the horizon is part of every token. No norm by default
  (``model.norm='none'``): a norm would discard the size of the pose changes, which is what the
  prediction is made of (with RMSNorm it barely beats the last observation).
* A learned query token (plus an encoding of the horizon ``target_t - t_last``) reads out the
  prediction, which is a residual over the last valid observation. The output projection starts
  at zero, so an untrained model *is* the last-observation predictor.
* Targets further than ``model.max_horizon`` frames after the last observation are clamped to it
  (the model is trained for horizons ``1..max_horizon``).

The tracker's interface (``phalp_jax/tracker.py``) is one function per tracklet,
``pose_predictor(pose_hist [H, Dp], times [H], valid [H] bool, target_t) -> [Dp]``, jax-traceable
and vmappable: :func:`last_observation` is the default, :func:`make_pose_predictor` wraps trained
parameters, :func:`load_pose_predictor` reads them from a training workdir.

Attention is the project's one :func:`toto_jax.attention.dot_product_attention`, non-causal, with
a key mask that hides the missing history entries.
"""

from __future__ import annotations

import math
import types
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from toto_jax import attention
from toto_jax.model import DenseGeneral, Mlp, RMSNorm, compute_dtype

Array = jax.Array
PosePredictorFn = Callable[[Array, Array, Array, Array], Array]

# Fields of ``config.model`` the predictor reads, with their defaults.
MODEL_DEFAULTS = {
    'pose_dim': 24,             # Dp: 229 for PHALP's HMAR features, 24 in the synthetic scenes
    'dim': 64,                  # token width
    'num_layers': 1,            # paper: 1 layer
    'num_heads': 1,             # paper: 1 head
    'mlp_dim': 128,
    'time_features': 32,        # sine-cosine features of a time offset (half sin, half cos)
    'time_max_period': 100.0,   # frames: the slowest sine-cosine period / (2 pi)
    'max_horizon': 12,          # c: frames ahead of the last observation (paper: 12)
    'absolute_pose': False,     # also feed absolute poses (not only offsets from the last one)
    'norm': 'none',             # 'none' | 'rms' (pre-norm RMSNorm, LLaMA)
    'norm_eps': 1e-6,
    'dtype': 'float32',
}


def model_config(config: Any) -> types.SimpleNamespace:
  """The predictor's settings from a run config (its ``model`` block) or a model block."""
  block = config.model if hasattr(config, 'model') and not hasattr(config, 'pose_dim') else config
  get = block.get if hasattr(block, 'get') else (lambda k, d: getattr(block, k, d))
  cfg = types.SimpleNamespace(**{k: get(k, v) for k, v in MODEL_DEFAULTS.items()})
  cfg.arch = 'llama'  # toto_jax.model.Mlp: SwiGLU, no biases
  return cfg


def validate_model_config(cfg: types.SimpleNamespace) -> None:
  """Raises ``ValueError`` naming the ``model.*`` field that cannot work."""
  for name in ('pose_dim', 'dim', 'num_layers', 'num_heads', 'mlp_dim', 'max_horizon'):
    if int(getattr(cfg, name)) < 1:
      raise ValueError(f'model.{name} must be >= 1, got {getattr(cfg, name)}')
  if cfg.dim % cfg.num_heads:
    raise ValueError(f'model.num_heads ({cfg.num_heads}) must divide model.dim ({cfg.dim})')
  if cfg.time_features < 2 or cfg.time_features % 2:
    raise ValueError(f'model.time_features must be even and >= 2, got {cfg.time_features}')
  if not cfg.time_max_period > 1:
    raise ValueError(f'model.time_max_period must be > 1 frame, got {cfg.time_max_period}')
  if cfg.norm not in ('rms', 'none'):
    raise ValueError(f"model.norm must be 'rms' or 'none', got {cfg.norm!r}")
  compute_dtype(cfg)


# ------------------------------------------------------------------------------------------------
# Last observation: the fallback predictor and the residual base
# ------------------------------------------------------------------------------------------------

def _last_valid(pose_hist: Array, times: Array, valid: Array) -> tuple[Array, Array, Array]:
  """``(pose, time, any_valid)`` of the latest valid entry over the history axis (``[..., H]``).

  Ties in time go to the first such slot; with no valid entry the pose is zeros."""
  valid = valid.astype(bool)
  times = times.astype(jnp.float32)
  idx = jnp.argmax(jnp.where(valid, times, -jnp.inf), axis=-1)
  pose = jnp.take_along_axis(pose_hist, idx[..., None, None], axis=-2)[..., 0, :]
  t_last = jnp.take_along_axis(times, idx[..., None], axis=-1)[..., 0]
  any_valid = valid.any(-1)
  return jnp.where(any_valid[..., None], pose, 0).astype(jnp.float32), t_last, any_valid


def last_observation(pose_hist: Array, times: Array, valid: Array, target_t: Array) -> Array:
  """The pose of the latest valid history entry (zeros when there is none): the default."""
  del target_t
  return _last_valid(jnp.asarray(pose_hist), jnp.asarray(times), jnp.asarray(valid))[0]


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

def time_encoding(offset: Array, features: int, max_period: float) -> Array:
  """Sine-cosine features ``[..., features]`` of time offsets in frames (any sign, fractional)."""
  half = features // 2
  freq = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  angle = offset.astype(jnp.float32)[..., None] * freq
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def _norm(cfg: types.SimpleNamespace, name: str) -> Callable[[Array], Array]:
  """RMSNorm, or the identity with ``model.norm='none'``: a norm discards each token's scale,
  and the scale of a pose change is what the prediction is made of."""
  if cfg.norm == 'none':
    return lambda x: x
  return RMSNorm(cfg.norm_eps, name=name)


class MaskedAttention(nn.Module):
  """Multi-head self-attention in which only valid tokens can be attended to."""
  config: Any

  @nn.compact
  def __call__(self, x: Array, key_valid: Array) -> Array:
    cfg = self.config
    dtype = compute_dtype(cfg)
    d, h = cfg.dim, cfg.num_heads
    hd = d // h
    proj = lambda name: DenseGeneral((d,), (h, hd), ('embed', 'heads', 'head_dim'), False, dtype,
                                     name=name)(x)
    q, k, v = proj('query'), proj('key'), proj('value')
    q = nn.with_logical_constraint(q, ('act_batch', 'act_length', 'act_heads', None))
    k = nn.with_logical_constraint(k, ('act_batch', 'act_length', 'act_heads', None))
    v = nn.with_logical_constraint(v, ('act_batch', 'act_length', 'act_heads', None))
    out = attention.dot_product_attention(q, k, v, causal=False, key_mask=key_valid)
    return DenseGeneral((h, hd), (d,), ('heads', 'head_dim', 'embed'), False, dtype,
                        name='out')(out)


class Layer(nn.Module):
  """Transformer layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))`` (norm: ``model.norm``)."""
  config: Any

  @nn.compact
  def __call__(self, x: Array, key_valid: Array) -> Array:
    cfg = self.config
    x = x + MaskedAttention(cfg, name='attn')(_norm(cfg, 'attn_norm')(x), key_valid)
    x = x + Mlp(cfg, name='mlp')(_norm(cfg, 'mlp_norm')(x))
    return nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_embed'))


class PosePredictor(nn.Module):
  """``(pose_hist [B, H, Dp], times [B, H], valid [B, H], target_t [B]) -> pose [B, Dp]``.

  Invariant to the order of the history slots and to a common shift of all times; invalid slots
  (whatever they hold) do not change the output."""
  config: Any

  @nn.compact
  def __call__(self, pose_hist: Array, times: Array, valid: Array, target_t: Array) -> Array:
    cfg = self.config
    dtype = compute_dtype(cfg)
    if pose_hist.shape[-1] != cfg.pose_dim:
      raise ValueError(f'pose history has {pose_hist.shape[-1]} features per frame but '
                       f'model.pose_dim is {cfg.pose_dim}')
    valid = valid.astype(bool)
    times = jnp.where(valid, times.astype(jnp.float32), 0.0)
    pose_hist = jnp.where(valid[..., None], pose_hist.astype(jnp.float32), 0.0)
    base, t_last, any_valid = _last_valid(pose_hist, times, valid)
    t_last = jnp.where(any_valid, t_last, target_t - 1.0)
    target = jnp.minimum(target_t.astype(jnp.float32), t_last + cfg.max_horizon)

    # History tokens: the pose relative to the last observation (and, with model.absolute_pose,
    # the pose itself), modulated and shifted by the time features of the slot: its offset from
    # the target and from the last observation. The modulation lets attention (positive weights)
    # form signed, horizon-dependent filters such as an extrapolation.
    feats = [pose_hist - base[:, None, :]] + ([pose_hist] if cfg.absolute_pose else [])
    feats = jnp.stack(feats, axis=-2)  # [B, H, 1 or 2, Dp]
    x = DenseGeneral(feats.shape[-2:], (cfg.dim,), (None, None, 'embed'), True, dtype,
                     name='pose_in')(feats)
    enc = lambda off: time_encoding(off, cfg.time_features, cfg.time_max_period)
    tf = jnp.stack([enc(times - target[:, None]), enc(times - t_last[:, None])], axis=-2)
    gate = DenseGeneral((2, cfg.time_features), (cfg.dim,), (None, None, 'embed'), False, dtype,
                        name='time_gate')(tf)
    shift = DenseGeneral((2, cfg.time_features), (cfg.dim,), (None, None, 'embed'), False, dtype,
                         name='time_in')(tf)
    x = x * (1 + gate) + shift
    # Query token: learned, plus the horizon (target - last observation).
    query = self.param('query', nn.with_logical_partitioning(
        nn.initializers.normal(stddev=0.02), ('embed',)), (cfg.dim,), jnp.float32)
    q = query.astype(dtype) + DenseGeneral((cfg.time_features,), (cfg.dim,), (None, 'embed'),
                                           False, dtype, name='horizon_in')(enc(t_last - target))
    x = jnp.concatenate([q[:, None, :], x], axis=1)
    x = nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_embed'))
    key_valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)

    for i in range(cfg.num_layers):
      x = Layer(cfg, name=f'layer_{i}')(x, key_valid)
    y = _norm(cfg, 'final_norm')(x[:, 0])
    # Zero-initialised readout: an untrained model predicts the last observation exactly.
    kernel = self.param('head', nn.with_logical_partitioning(nn.initializers.zeros,
                                                             ('embed', None)),
                        (cfg.dim, cfg.pose_dim), jnp.float32)
    bias = self.param('head_bias', nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                      (cfg.pose_dim,), jnp.float32)
    residual = (y.astype(dtype) @ kernel.astype(dtype)).astype(jnp.float32) + bias
    return base + residual


def init_params(config: Any, rng: jax.Array, history: int = 7) -> Any:
  """Boxed (logically partitioned) parameters for a model config."""
  cfg = model_config(config)
  model = PosePredictor(cfg)
  b, dp = 1, cfg.pose_dim
  return model.init(rng, jnp.zeros((b, history, dp)), jnp.zeros((b, history)),
                    jnp.ones((b, history), bool), jnp.ones((b,)))['params']


# ------------------------------------------------------------------------------------------------
# The tracker's interface
# ------------------------------------------------------------------------------------------------

def make_pose_predictor(params: Any | None, config: Any) -> PosePredictorFn:
  """``pose_predictor(pose_hist [H, Dp], times [H], valid [H], target_t) -> [Dp]`` for the tracker.

  ``params`` as trained (boxed or plain, NumPy or jax); ``None`` gives :func:`last_observation`.
  ``config`` is the run config or its ``model`` block. The function is jax-traceable, jittable
  and vmappable over tracklets."""
  if params is None:
    return last_observation
  cfg = model_config(config)
  validate_model_config(cfg)
  model = PosePredictor(cfg)
  params = jax.tree_util.tree_map(  # plain arrays: no sharding constraint from the boxes
      lambda x: jnp.asarray(x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata)
                            else x), params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))

  def pose_predictor(pose_hist: Array, times: Array, valid: Array, target_t: Array) -> Array:
    pose_hist, times, valid = jnp.asarray(pose_hist), jnp.asarray(times), jnp.asarray(valid)
    if pose_hist.ndim != 2 or times.shape != pose_hist.shape[:1] or valid.shape != times.shape:
      raise ValueError(f'pose_predictor expects pose_hist [H, Dp], times [H], valid [H]; got '
                       f'{pose_hist.shape}, {times.shape}, {valid.shape}')
    target_t = jnp.asarray(target_t, jnp.float32).reshape(1)
    return model.apply({'params': params}, pose_hist[None], times[None], valid[None],
                       target_t)[0]
  return pose_predictor


def load_pose_predictor(workdir: str | None, step: int | None = None) -> PosePredictorFn:
  """The predictor trained in ``workdir`` (``launch.train`` with ``configs/phalp.py``); an empty
  ``workdir`` gives :func:`last_observation` (no weights, no prediction)."""
  if not workdir:
    return last_observation
  from launch import checkpoint as ckpt_lib
  run = ckpt_lib.load(workdir, step)
  if run['config'].get('task') != 'phalp_pose':
    raise ValueError(f'{workdir}: task is {run["config"].get("task")!r}, not a pose predictor '
                     f"run (task 'phalp_pose', configs/phalp.py)")
  return make_pose_predictor(run['params'], run['config'])
