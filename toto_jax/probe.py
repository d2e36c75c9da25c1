"""Probing a frozen Toto: features of every layer, probes for every layer trained jointly.

Seed 000, sections 4.3-4.4. Three heads (``PROBES``):

* ``linear``: global average pool over the tokens, then one linear layer.
* ``attention``: one learned query cross-attends to the layer's tokens through learned ``W_k``,
  ``W_v`` (optionally several heads), then one linear layer. An autoregressive model's late tokens
  have seen more of the clip; attention pooling can weight them up, average pooling cannot.
* ``attention_mlp``: the attention pooling followed by an MLP block (Table 4.16, a higher-capacity
  head).

Pipeline: :func:`extract_features` runs the backbone once over the data (jitted, fixed batch,
sharded over the local devices, a progress bar) and keeps, for every layer, the mean-pooled
feature ``[layers, N, dim]`` and the token features the attention probes read ``[layers, N, K,
dim]``. Token features are ``layers x N x L x dim`` floats: ``tokens='frame'`` keeps one token per
frame (the mean of its ``h x w`` tokens, ``K = T``) and ``tokens='sample:K'`` K evenly spaced
tokens, when all of them would not fit in memory. :func:`train_probes` trains one probe per layer
at once on a parameter tree stacked on a leading layer axis (``jax.vmap``); every layer's
parameters see only their own loss and AdamW is elementwise, so it gives what training each layer
alone would, in one compiled step. :func:`probe_layers` adds the held-out accuracy per layer and
the best layer; :func:`plot_accuracy_vs_depth` draws accuracy against depth.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Probe heads
# ---------------------------------------------------------------------------------------------

# Every probe parameter carries logical axis names (as the backbone's do), so a probe inside a
# trainer task is sharded by the same rules table; ``classes`` matches no rule (replicated).

def _named(init: Callable, axes: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(init, axes)


def _head(num_classes: int) -> nn.Dense:
  return nn.Dense(num_classes, kernel_init=_named(nn.initializers.zeros, ('embed', 'classes')),
                  bias_init=_named(nn.initializers.zeros, ('classes',)), name='head')


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(scale_init=_named(nn.initializers.ones, ('embed',)),
                      bias_init=_named(nn.initializers.zeros, ('embed',)), name=name)


class LinearProbe(nn.Module):
  """Global average pool over tokens + linear: ``[B, K, D]`` (or pooled ``[B, D]``) -> logits."""
  num_classes: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim == 3:
      x = jnp.mean(x, axis=1)
    return _head(self.num_classes)(x)


class AttentionPool(nn.Module):
  """One learned query cross-attending to the tokens with learned ``W_k``, ``W_v``:
  ``[B, K, D] -> [B, dim]`` (``dim`` defaults to ``D``; ``num_heads`` must divide it)."""
  num_heads: int = 1
  dim: int | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim != 3:
      raise ValueError(f'AttentionPool: expected token features [batch, tokens, dim], got shape '
                       f'{x.shape}')
    dim = self.dim or x.shape[-1]
    if dim % self.num_heads:
      raise ValueError(f'AttentionPool: num_heads ({self.num_heads}) must divide dim ({dim})')
    hd = dim // self.num_heads
    query = self.param('query', _named(nn.initializers.normal(0.02), ('heads', 'head_dim')),
                       (self.num_heads, hd))
    # W_k, W_v as [D, heads, head_dim] parameters (flax's DenseGeneral initialises a flattened
    # kernel, which three logical axis names cannot describe).
    kv_init = _named(nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                     ('embed', 'heads', 'head_dim'))
    shape = (x.shape[-1], self.num_heads, hd)
    k = jnp.einsum('bkd,dhe->bkhe', x, self.param('key', kv_init, shape))
    v = jnp.einsum('bkd,dhe->bkhe', x, self.param('value', kv_init, shape))
    scores = jnp.einsum('hd,bkhd->bhk', query, k) / math.sqrt(hd)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    out = jnp.einsum('bhk,bkhd->bhd', weights, v)
    return out.reshape(x.shape[0], dim)


class AttentionProbe(nn.Module):
  """:class:`AttentionPool` then one linear layer (the thesis' attention probe)."""
  num_classes: int
  num_heads: int = 1
  dim: int | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pooled = AttentionPool(self.num_heads, self.dim, name='pool')(x)
    return _head(self.num_classes)(pooled)


class AttentionMlpProbe(nn.Module):
  """:class:`AttentionPool`, a pre-norm residual MLP block, a norm, then linear (Table 4.16)."""
  num_classes: int
  num_heads: int = 1
  dim: int | None = None
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pooled = AttentionPool(self.num_heads, self.dim, name='pool')(x)
    d = pooled.shape[-1]
    up = nn.Dense(self.mlp_ratio * d, kernel_init=_named(nn.initializers.lecun_normal(),
                                                         ('embed', 'mlp')),
                  bias_init=_named(nn.initializers.zeros, ('mlp',)), name='mlp_up')
    down = nn.Dense(d, kernel_init=_named(nn.initializers.lecun_normal(), ('mlp', 'embed')),
                    bias_init=_named(nn.initializers.zeros, ('embed',)), name='mlp_down')
    pooled = pooled + down(nn.gelu(up(_layer_norm('mlp_norm')(pooled))))
    pooled = _layer_norm('head_norm')(pooled)
    return _head(self.num_classes)(pooled)


PROBES = ('linear', 'attention', 'attention_mlp')


def make_probe(kind: str, num_classes: int, *, num_heads: int = 1) -> nn.Module:
  """The probe head called ``kind`` (one of :data:`PROBES`)."""
  if kind == 'linear':
    return LinearProbe(num_classes)
  if kind == 'attention':
    return AttentionProbe(num_classes, num_heads=num_heads)
  if kind == 'attention_mlp':
    return AttentionMlpProbe(num_classes, num_heads=num_heads)
  raise ValueError(f'probe kind must be one of {PROBES}, got {kind!r}')


# ---------------------------------------------------------------------------------------------
# Feature extraction
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Features:
  """Per-layer features of N examples: ``pooled [layers, N, D]``, ``tokens [layers, N, K, D]``
  (``None`` when not kept)."""
  pooled: np.ndarray
  tokens: np.ndarray | None

  def for_probe(self, kind: str) -> np.ndarray:
    if kind == 'linear':
      return self.pooled
    if self.tokens is None:
      raise ValueError(f'the {kind!r} probe needs token features: extract with tokens != "none"')
    return self.tokens


def parse_token_spec(spec: str) -> tuple[str, int]:
  """``'all' | 'frame' | 'sample:K' | 'none'`` -> ``(mode, K)`` (K only for 'sample')."""
  if spec in ('all', 'frame', 'none'):
    return spec, 0
  if spec.startswith('sample:'):
    try:
      k = int(spec[len('sample:'):])
    except ValueError:
      k = 0
    if k >= 1:
      return 'sample', k
  raise ValueError(f"tokens must be 'all', 'frame', 'sample:K' (K >= 1) or 'none', got {spec!r}")


def _token_reducer(spec: str, length: int, tokens_per_frame: int) -> Callable[[Array], Array]:
  """``[layers, B, length, D] -> [layers, B, K, D]`` for the token spec."""
  mode, k = parse_token_spec(spec)
  if mode == 'all':
    return lambda h: h
  if mode == 'frame':
    if tokens_per_frame < 1 or length % tokens_per_frame:
      raise ValueError(f"tokens='frame': {length} feature positions are not a whole number of "
                       f'frames of {tokens_per_frame} tokens')
    return lambda h: h.reshape(h.shape[:2] + (length // tokens_per_frame, tokens_per_frame,
                                              h.shape[-1])).mean(axis=3)
  if mode == 'sample':
    idx = np.unique(np.linspace(0, length - 1, min(k, length)).round().astype(np.int32))
    return lambda h: h[:, :, idx]
  return lambda h: None


def extract_features(model_config: Any, params: Any, tokens: np.ndarray, *, skip: int = 1,
                     tokens_spec: str = 'all', tokens_per_frame: int = 0, batch_size: int = 32,
                     progress: bool = True) -> Features:
  """Runs the frozen Toto once over ``tokens`` (int ``[N, L]`` model inputs) and keeps every
  layer's residual stream (positions ``skip:``, i.e. without the start marker).

  One jitted function at one batch shape (the last batch is padded), the batch split over the
  local devices; ``tokens_spec`` as in :func:`parse_token_spec`, ``'frame'`` needs
  ``tokens_per_frame``.
  """
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from tqdm import tqdm

  from toto_jax.model import Toto

  tokens = np.asarray(tokens, np.int32)
  if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] <= skip:
    raise ValueError(f'tokens: expected int [N >= 1, L > {skip}], got shape {tokens.shape}')
  max_len = int(model_config.max_len)
  if tokens.shape[1] > max_len:
    raise ValueError(f'tokens: sequences of {tokens.shape[1]} ids are longer than the model\'s '
                     f'model.max_len = {max_len}')
  n, length = tokens.shape[0], tokens.shape[1] - skip
  reduce = _token_reducer(tokens_spec, length, tokens_per_frame)
  model = Toto(model_config)

  def features(p, batch):
    _, hidden = model.apply({'params': p}, batch, return_hidden=True)
    hidden = hidden[:, :, skip:].astype(jnp.float32)  # [layers, B, length, D]
    return hidden.mean(axis=2), reduce(hidden)

  devices = jax.local_devices()
  bs = max(len(devices), -(-batch_size // len(devices)) * len(devices))
  sharding = NamedSharding(Mesh(np.array(devices), ('data',)), PartitionSpec('data'))
  params = jax.device_put(params, NamedSharding(sharding.mesh, PartitionSpec()))
  step = jax.jit(features)
  pooled_parts, token_parts = [], []
  with tqdm(total=n, unit='example', desc='features', disable=not progress,
            dynamic_ncols=True) as bar:
    for start in range(0, n, bs):
      chunk = tokens[start:start + bs]
      real = chunk.shape[0]
      if real < bs:  # one batch shape: one compilation
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - real, axis=0)])
      pooled, toks = jax.device_get(step(params, jax.device_put(chunk, sharding)))
      pooled_parts.append(np.asarray(pooled)[:, :real])
      if toks is not None:
        token_parts.append(np.asarray(toks)[:, :real])
      bar.update(real)
  return Features(np.concatenate(pooled_parts, axis=1),
                  np.concatenate(token_parts, axis=1) if token_parts else None)


# ---------------------------------------------------------------------------------------------
# Joint training of one probe per layer
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainSettings:
  """AdamW on a linear warm-up + cosine schedule, minibatches drawn without replacement."""
  epochs: int = 50
  batch_size: int = 64
  lr: float = 1e-3
  weight_decay: float = 0.05
  warmup_fraction: float = 0.1
  seed: int = 0


def standardizer(train_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-layer, per-channel mean and std of training features ``[layers, N, (K,) D]``.

  Residual-stream scales grow with depth; standardising each layer (an affine map, so a linear
  probe stays linear) lets one learning rate serve every layer.
  """
  axes = tuple(range(1, train_x.ndim - 1))
  mean = train_x.mean(axis=axes, keepdims=True)
  std = train_x.std(axis=axes, keepdims=True) + 1e-6
  return mean.astype(np.float32), std.astype(np.float32)


def _check_xy(x: np.ndarray, y: np.ndarray, num_classes: int, where: str) -> None:
  if x.ndim not in (3, 4):
    raise ValueError(f'{where}: features must be [layers, N, D] or [layers, N, K, D], got '
                     f'{x.shape}')
  if y.shape != (x.shape[1],):
    raise ValueError(f'{where}: {y.shape[0] if y.ndim else 0} labels for {x.shape[1]} examples')
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f'{where}: labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]')


def train_probes(probe: nn.Module, train_x: np.ndarray, train_y: np.ndarray, num_classes: int,
                 settings: TrainSettings = TrainSettings(), *, init_keys: Array | None = None,
                 progress: bool = True) -> tuple[Any, list[float]]:
  """Trains one ``probe`` per layer on ``train_x [layers, N, ...]`` (already standardised) and
  integer ``train_y [N]``; returns (params stacked on a leading layer axis, mean loss per epoch).

  ``init_keys [layers]`` seeds each layer's initialisation (default: split from
  ``settings.seed``); minibatch order depends on ``settings.seed`` only, so a one-layer call with
  that layer's key and features reproduces the joint result for that layer.
  """
  from tqdm import tqdm

  train_x = np.asarray(train_x, np.float32)
  train_y = np.asarray(train_y, np.int32)
  _check_xy(train_x, train_y, num_classes, 'train_probes')
  layers, n = train_x.shape[:2]
  if init_keys is None:
    init_keys = jax.random.split(jax.random.key(settings.seed), layers)
  bs = min(settings.batch_size, n)
  steps_per_epoch = n // bs
  total = max(1, settings.epochs * steps_per_epoch)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, settings.lr, int(settings.warmup_fraction * total), max(total, 2), settings.lr * 0.01)
  tx = optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=settings.weight_decay)
  params = jax.vmap(lambda k: nn.unbox(probe.init(k, train_x[0, :1])['params']))(init_keys)
  opt_state = tx.init(params)

  def layer_loss(p, x, y):
    logits = probe.apply({'params': p}, x).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def loss_fn(p, x, y):
    losses = jax.vmap(layer_loss, in_axes=(0, 0, None))(p, x, y)
    return losses.sum(), losses

  @jax.jit
  def step(params, opt_state, x_all, y_all, idx):
    (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, jnp.take(x_all, idx, axis=1), jnp.take(y_all, idx))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, losses

  x_dev, y_dev = jnp.asarray(train_x), jnp.asarray(train_y)
  rng = np.random.default_rng(settings.seed)
  history = []
  for _ in tqdm(range(settings.epochs), desc=f'{type(probe).__name__} x {layers} layers',
                unit='epoch', disable=not progress, dynamic_ncols=True):
    order = rng.permutation(n)
    epoch_losses = []
    for s in range(steps_per_epoch):
      params, opt_state, losses = step(params, opt_state, x_dev, y_dev,
                                       jnp.asarray(order[s * bs:(s + 1) * bs]))
      epoch_losses.append(losses)
    history.append(float(jnp.mean(jnp.stack(epoch_losses))))
  return params, history


def predict_probes(probe: nn.Module, params: Any, x: np.ndarray, batch_size: int = 256
                   ) -> np.ndarray:
  """Predicted classes ``[layers, N]`` of the stacked per-layer probes on ``x [layers, N, ...]``."""
  apply = jax.jit(jax.vmap(lambda p, xb: jnp.argmax(probe.apply({'params': p}, xb), -1)))
  out = [np.asarray(apply(params, jnp.asarray(x[:, s:s + batch_size], jnp.float32)))
         for s in range(0, x.shape[1], batch_size)]
  return np.concatenate(out, axis=1)


@dataclasses.dataclass
class ProbeResult:
  """One probe kind over every layer: held-out and training accuracy per layer (depth 1..L)."""
  kind: str
  eval_accuracy: list[float]
  train_accuracy: list[float]
  loss_history: list[float]

  @property
  def best_layer(self) -> int:
    """1-based depth of the best held-out accuracy (the earliest on ties)."""
    return int(np.argmax(self.eval_accuracy)) + 1

  @property
  def best_accuracy(self) -> float:
    return float(max(self.eval_accuracy))

  def to_json(self) -> dict:
    return {'kind': self.kind, 'eval_accuracy': self.eval_accuracy,
            'train_accuracy': self.train_accuracy, 'best_layer': self.best_layer,
            'best_accuracy': self.best_accuracy, 'final_train_loss': self.loss_history[-1]
            if self.loss_history else None}


def probe_layers(kind: str, train: Features, train_y: np.ndarray, evaluation: Features,
                 eval_y: np.ndarray, num_classes: int, settings: TrainSettings = TrainSettings(),
                 *, num_heads: int = 1, progress: bool = True) -> ProbeResult:
  """Trains the ``kind`` probe on every layer of ``train`` at once and measures it on
  ``evaluation`` (features standardised with the training statistics)."""
  probe = make_probe(kind, num_classes, num_heads=num_heads)
  tx, ex = train.for_probe(kind), evaluation.for_probe(kind)
  mean, std = standardizer(tx)
  tx = (tx - mean) / std
  ex = (ex - mean) / std
  train_y, eval_y = np.asarray(train_y), np.asarray(eval_y)
  _check_xy(ex, eval_y, num_classes, 'probe_layers (eval)')
  params, history = train_probes(probe, tx, train_y, num_classes, settings, progress=progress)
  eval_acc = (predict_probes(probe, params, ex) == eval_y[None]).mean(axis=1)
  train_acc = (predict_probes(probe, params, tx) == train_y[None]).mean(axis=1)
  return ProbeResult(kind, [float(a) for a in eval_acc], [float(a) for a in train_acc], history)


# ---------------------------------------------------------------------------------------------
# Picture
# ---------------------------------------------------------------------------------------------

def plot_accuracy_vs_depth(results: Sequence[ProbeResult], path: str, *, chance: float | None = None,
                           title: str = '', depths: Sequence[int] | None = None) -> None:
  """Held-out accuracy against layer depth, one line per probe kind, the best layer marked;
  written atomically as a PNG. ``depths``: the real depth of each probed layer when only some
  were probed (default 1..L)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from tokenizers_jax.pictures import save_figure

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for r in results:
    depth = np.asarray(depths) if depths is not None else np.arange(1, len(r.eval_accuracy) + 1)
    line, = ax.plot(depth, np.asarray(r.eval_accuracy) * 100, 'o-',
                    label=f'{r.kind} held-out (best {r.best_accuracy:.1%} @ layer '
                          f'{depth[r.best_layer - 1]})')
    ax.plot(depth, np.asarray(r.train_accuracy) * 100, ':', color=line.get_color(), alpha=0.6,
            label=f'{r.kind} train')
    ax.plot([depth[r.best_layer - 1]], [r.best_accuracy * 100], '*', ms=14,
            color=line.get_color())
  if chance is not None:
    ax.axhline(chance * 100, color='gray', ls='--', label=f'majority class {chance:.1%}')
  ax.set_xticks(depth)
  ax.set_xlabel('layer (depth)')
  ax.set_ylabel('top-1 accuracy (%)')
  ax.set_title(title or 'Probe accuracy against depth')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)
