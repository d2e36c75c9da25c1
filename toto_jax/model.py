"""Toto: a LLaMA-style causal decoder over discrete visual tokens (seed 000, Eq. 4.3-4.4).

One file, two architectures selected by ``config.arch``:

* ``llama`` (default): pre-norm RMSNorm, SwiGLU MLP, rotary positions (RoPE) with a configurable
  base, no biases, untied input/output embeddings, optional grouped key/value heads.
* ``gpt2``: pre-norm LayerNorm, GELU MLP, absolute sine-cosine positions, biases (Table 4.6).

Every parameter carries logical axis names (``embed``, ``heads``, ``kv_heads``, ``head_dim``,
``mlp``, ``vocab``, ``layers``) and the main activations carry ``act_*`` names; the rules table in
the config maps them onto the mesh, so the model never names a mesh axis. Layers run under
``nn.scan`` (parameters stacked on a leading ``layers`` axis), or one after another with their own
parameters when ``config.scan_layers`` is False (:func:`layer_stack`), with a configurable remat
policy.

Decoding with a key/value cache: ``Toto(config, decode=True)`` keeps each layer's keys and values in
a ``cache`` collection (laid out like the parameters, stacked or per layer) plus the next position
``index``; a call on ``[batch, t]`` tokens writes them at ``index .. index + t - 1`` (RoPE and
sine-cosine positions continue from ``index``) and attends to everything cached so far, so a
prefill of the prompt followed by one-token calls gives the logits of a full recompute. The
parameter tree is the same in both modes. See :func:`init_cache` and :mod:`toto_jax.sampling`.

The model takes a ``ml_collections.ConfigDict`` (the ``model`` block of a run config) or any object
with the same attributes; :func:`padded_vocab_size` gives the embedding rows actually allocated.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from toto_jax import attention, mup

Array = jax.Array

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """Embedding rows allocated: ``vocab_size`` rounded up to ``multiple`` (MXU/tensor-core friendly)."""
  return int(math.ceil(vocab_size / multiple) * multiple)


def compute_dtype(config) -> jnp.dtype:
  try:
    return _DTYPES[config.dtype]
  except KeyError:
    raise ValueError(f'model.dtype must be one of {sorted(_DTYPES)}, got {config.dtype!r}') from None


# Remat policies by name; 'none' keeps every activation, 'full' recomputes the whole layer.
REMAT_POLICIES: dict[str, Callable | None] = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _dense_init(stddev: float = 0.02):
  return nn.initializers.normal(stddev=stddev)


# ---------------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------------

def rope_frequencies(head_dim: int, base: float) -> np.ndarray:
  """Inverse frequencies of rotary embeddings, ``base ** (-2i / head_dim)``."""
  return 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def apply_rope(x: Array, positions: Array, base: float) -> Array:
  """Rotates ``x`` [batch, length, heads, head_dim] by position (half-split layout, as HF LLaMA)."""
  head_dim = x.shape[-1]
  inv_freq = jnp.asarray(rope_frequencies(head_dim, base), dtype=jnp.float32)
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, length, head_dim/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def sincos_positions(length: int, dim: int) -> np.ndarray:
  """Absolute sine-cosine position table [length, dim] (GPT-2 variant)."""
  pos = np.arange(length, dtype=np.float64)[:, None]
  inv = 1.0 / (10000 ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  table = np.zeros((length, dim), dtype=np.float32)
  table[:, 0::2] = np.sin(pos * inv)
  table[:, 1::2] = np.cos(pos * inv)[:, : dim // 2]
  return table


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
  """Root-mean-square norm computed in float32 (LLaMA)."""
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (x.shape[-1],), jnp.float32)
    return rms_norm(x, scale, self.eps)


def _inverse_rms(x32: Array, eps: float) -> Array:
  return jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: Array, scale: Array, eps: float) -> Array:
  """``x / rms(x) * scale`` in float32, returned in ``x``'s dtype. Differentiated by hand so the
  backward pass keeps ``x`` and one inverse RMS per row, not also the normalised ``x`` (autodiff
  keeps both, one more ``[tokens, dim]`` array per norm)."""
  return _rms_norm_forward(x, scale, eps)[0]


def _rms_norm_forward(x: Array, scale: Array, eps: float):
  x32 = x.astype(jnp.float32)
  inv = _inverse_rms(x32, eps)
  return (x32 * inv * scale).astype(x.dtype), (x, inv, scale)


def _rms_norm_backward(eps: float, residuals, dy: Array):
  del eps
  x, inv, scale = residuals
  normed = x.astype(jnp.float32) * inv
  dy32 = dy.astype(jnp.float32)
  d_normed = dy32 * scale
  d_scale = (dy32 * normed).reshape(-1, normed.shape[-1]).sum(0)
  dx = inv * (d_normed - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
  return dx.astype(x.dtype), d_scale


rms_norm.defvjp(_rms_norm_forward, _rms_norm_backward)


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias, statistics in float32 (GPT-2)."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (d,), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      (d,), jnp.float32)
    return layer_norm(x, scale, bias, self.eps)


def _layer_norm_statistics(x32: Array, eps: float) -> tuple[Array, Array]:
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return mean, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """``(x - mean) / std * scale + bias`` in float32, returned in ``x``'s dtype; like
  :func:`rms_norm`, differentiated by hand so the backward pass keeps ``x`` and two numbers per
  row instead of also the centred and normalised ``x``."""
  return _layer_norm_forward(x, scale, bias, eps)[0]


def _layer_norm_forward(x: Array, scale: Array, bias: Array, eps: float):
  x32 = x.astype(jnp.float32)
  mean, inv = _layer_norm_statistics(x32, eps)
  return ((x32 - mean) * inv * scale + bias).astype(x.dtype), (x, mean, inv, scale)


def _layer_norm_backward(eps: float, residuals, dy: Array):
  del eps
  x, mean, inv, scale = residuals
  normed = (x.astype(jnp.float32) - mean) * inv
  dy32 = dy.astype(jnp.float32)
  d_normed = dy32 * scale
  dx = inv * (d_normed - jnp.mean(d_normed, axis=-1, keepdims=True)
              - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
  rows = (-1, normed.shape[-1])
  return (dx.astype(x.dtype), (dy32 * normed).reshape(rows).sum(0), dy32.reshape(rows).sum(0))


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


def norm(config, name: str) -> nn.Module:
  if config.arch == 'gpt2':
    return LayerNorm(eps=config.norm_eps, name=name)
  return RMSNorm(eps=config.norm_eps, name=name)


def shared_input(x: Array, dtype) -> Array:
  """``x`` cast and flattened to ``[tokens, features]`` once for several projections of it
  (q/k/v, gate/up). Each :class:`DenseGeneral` would otherwise make its own copy, and autodiff
  keeps every copy for the weight gradients: on ``base``, three extra ``[tokens, dim]`` arrays
  per layer."""
  return x.astype(dtype).reshape(-1, x.shape[-1])


class DenseGeneral(nn.Module):
  """A projection with named axes: kernel shape ``in_shape + out_shape``, float32 storage."""
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  axes: tuple[str, ...]
  use_bias: bool
  dtype: Any
  init_std: float = 0.02  # muP scales it for hidden matrices (toto_jax.mup)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel',
                        nn.with_logical_partitioning(_dense_init(self.init_std), self.axes),
                        self.in_shape + self.out_shape, jnp.float32)
    # As one 2-D matmul: XLA:CPU runs a weight gradient that contracts over (batch, length)
    # about 3x slower than the same contraction over one flattened axis; elsewhere it is free.
    lead = x.shape[:x.ndim - len(self.in_shape)]
    n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
    y = x.astype(self.dtype).reshape(-1, n_in) @ kernel.astype(self.dtype).reshape(n_in, n_out)
    y = y.reshape(lead + self.out_shape)
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                             self.axes[len(self.in_shape):]),
                        self.out_shape, jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class Attention(nn.Module):
  """Multi-head attention (causal when ``config.causal``) with optional grouped key/value heads.

  ``key_mask`` (bool ``[batch, length]``) hides tokens as keys from every query: LART's missing
  detections and masked tokens.

  The attention itself is :func:`toto_jax.attention.dot_product_attention`:
  ``jax.nn.dot_product_attention`` on accelerators (the fused cuDNN kernel on GPUs), a compiled
  fused causal kernel on CPU (the XLA blockwise one where it cannot be built);
  ``config.attention_impl`` forces one.
  """
  config: Any
  decode: bool = False
  cache_len: int | None = None

  @nn.compact
  def __call__(self, x: Array, positions: Array, key_mask: Array | None = None) -> Array:
    cfg = self.config
    dtype = compute_dtype(cfg)
    d, h, kvh = cfg.dim, cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
    hd = d // h
    bias = cfg.arch == 'gpt2'
    std = mup.hidden_init_std(cfg)
    b, t = x.shape[:2]
    x = shared_input(x, dtype)
    q = DenseGeneral((d,), (h, hd), ('embed', 'heads', 'head_dim'), bias, dtype, std,
                     name='query')(x).reshape(b, t, h, hd)
    k = DenseGeneral((d,), (kvh, hd), ('embed', 'kv_heads', 'head_dim'), bias, dtype, std,
                     name='key')(x).reshape(b, t, kvh, hd)
    v = DenseGeneral((d,), (kvh, hd), ('embed', 'kv_heads', 'head_dim'), bias, dtype, std,
                     name='value')(x).reshape(b, t, kvh, hd)
    if cfg.arch == 'llama':
      q = apply_rope(q, positions, cfg.rope_base)
      k = apply_rope(k, positions, cfg.rope_base)
    if mup.enabled(cfg):  # attention logits ~ 1/head_dim (toto_jax.mup.query_multiplier)
      q = q * mup.query_multiplier(cfg)
    q = nn.with_logical_constraint(q, ('act_batch', 'act_length', 'act_heads', None))
    k = nn.with_logical_constraint(k, ('act_batch', 'act_length', 'act_kv_heads', None))
    v = nn.with_logical_constraint(v, ('act_batch', 'act_length', 'act_kv_heads', None))
    if self.decode:
      out = self._cached_attention(q, k, v, positions, key_mask)
    else:
      out = attention.dot_product_attention(q, k, v, causal=cfg.causal,
                                            implementation=cfg.attention_impl, key_mask=key_mask)
    out = nn.with_logical_constraint(out, ('act_batch', 'act_length', 'act_heads', None))
    return DenseGeneral((h, hd), (d,), ('heads', 'head_dim', 'embed'), bias, dtype, std,
                        name='out')(out)

  def _cached_attention(self, q: Array, k: Array, v: Array, positions: Array,
                        key_mask: Array | None) -> Array:
    """Writes ``k``/``v`` into the cache at ``positions[0]`` and attends over the whole cache;
    a query at position ``p`` sees the cached keys ``0..p`` (all of them without ``config.causal``
    would also see unwritten slots, so decoding requires a causal model)."""
    if not self.config.causal:
      raise ValueError('decoding with a key/value cache needs model.causal = True')
    if key_mask is not None:
      raise ValueError('decoding with a key/value cache does not take a key_mask')
    b, _, kvh, hd = k.shape
    length = self.cache_len or self.config.max_len
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, (b, length, kvh, hd), k.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, (b, length, kvh, hd), v.dtype)
    if not self.is_initializing():  # init only allocates the (empty) cache
      start = positions[0, 0]
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype),
                                                    (0, start, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype),
                                                    (0, start, 0, 0))
    visible = jnp.arange(length)[None, None, None, :] <= positions[:, None, :, None]
    return jax.nn.dot_product_attention(q, cached_k.value.astype(q.dtype),
                                        cached_v.value.astype(q.dtype), mask=visible)


@jax.custom_vjp
def swiglu(gate: Array, up: Array) -> Array:
  """``silu(gate) * up``, differentiated by hand so the backward pass keeps only ``gate`` and
  ``up``: autodiff also keeps ``sigmoid(gate)`` and ``silu(gate)``, two more ``[tokens, mlp]``
  arrays per layer. Alone, it took the ``base`` CPU train step to 0.90x the time and 20% less
  temporary memory (the README's Benchmarks give the figures of all the hand-written VJPs)."""
  return _swiglu_forward(gate, up)[0]


def _swiglu_forward(gate: Array, up: Array):
  return nn.silu(gate) * up, (gate, up)


def _swiglu_backward(residuals, d_hidden: Array):
  gate, up = residuals
  g, u, d = (a.astype(jnp.float32) for a in (gate, up, d_hidden))
  sig = jax.nn.sigmoid(g)
  # d silu(g) / dg = sig + g * sig * (1 - sig)
  return ((d * u * sig * (1 + g * (1 - sig))).astype(gate.dtype),
          (d * g * sig).astype(up.dtype))


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


_GELU_C, _GELU_A = math.sqrt(2 / math.pi), 0.044715  # tanh(C * (x + A * x^3))


@jax.custom_vjp
def gelu(x: Array) -> Array:
  """GELU, tanh approximation (GPT-2); the backward pass keeps only ``x`` (autodiff keeps the
  tanh and its intermediates as well, each ``[tokens, mlp]``)."""
  return _gelu_forward(x)[0]


def _gelu_forward(x: Array):
  return nn.gelu(x, approximate=True), x


def _gelu_backward(x: Array, dy: Array):
  x32 = x.astype(jnp.float32)
  t = jnp.tanh(_GELU_C * (x32 + _GELU_A * x32 ** 3))
  slope = 0.5 * (1 + t) + 0.5 * x32 * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * x32 * x32)
  return ((dy.astype(jnp.float32) * slope).astype(x.dtype),)


gelu.defvjp(_gelu_forward, _gelu_backward)


class Mlp(nn.Module):
  """SwiGLU (llama) or GELU (gpt2) feed-forward block."""
  config: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dtype = compute_dtype(cfg)
    d, m = cfg.dim, cfg.mlp_dim
    std = mup.hidden_init_std(cfg)
    if cfg.arch == 'gpt2':
      hidden = DenseGeneral((d,), (m,), ('embed', 'mlp'), True, dtype, std, name='up')(x)
      hidden = gelu(hidden)
    else:
      lead, x = x.shape[:-1], shared_input(x, dtype)
      gate = DenseGeneral((d,), (m,), ('embed', 'mlp'), False, dtype, std, name='gate')(x)
      up = DenseGeneral((d,), (m,), ('embed', 'mlp'), False, dtype, std, name='up')(x)
      hidden = swiglu(gate, up).reshape(lead + (m,))
    hidden = nn.with_logical_constraint(hidden, ('act_batch', 'act_length', 'act_mlp'))
    return DenseGeneral((m,), (d,), ('mlp', 'embed'), cfg.arch == 'gpt2', dtype, std,
                        name='down')(hidden)


def drop_path(x: Array, rate: float, rng: Array) -> Array:
  """Stochastic depth: zeroes a residual branch per example with probability ``rate`` and
  rescales the survivors by ``1 / (1 - rate)``."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Block(nn.Module):
  """One pre-norm layer: ``h + attn(norm(h))`` then ``h + mlp(norm(h))``.

  Each residual branch goes through dropout (``config.dropout``) and stochastic depth
  (``config.drop_path``, the same rate in every layer) unless ``deterministic``; both default to
  0 (Toto pre-training uses neither; LART fine-tuning uses drop path 0.1). Returns
  ``(h, h if emit_hidden else None)`` so ``nn.scan`` can stack per-layer features.
  """
  config: Any
  emit_hidden: bool = False
  deterministic: bool = True
  decode: bool = False
  cache_len: int | None = None

  def _branch(self, y: Array) -> Array:
    cfg = self.config
    rate, path_rate = getattr(cfg, 'dropout', 0.0), getattr(cfg, 'drop_path', 0.0)
    if self.deterministic:
      return y
    if rate:
      y = nn.Dropout(rate)(y, deterministic=False)
    if path_rate:
      y = drop_path(y, path_rate, self.make_rng('dropout'))
    return y

  @nn.compact
  def __call__(self, x: Array, positions: Array, key_mask: Array | None = None
               ) -> tuple[Array, Array | None]:
    attn = Attention(self.config, self.decode, self.cache_len, name='attn')(
        norm(self.config, 'attn_norm')(x), positions, key_mask)
    x = x + self._branch(attn)
    x = x + self._branch(Mlp(self.config, name='mlp')(norm(self.config, 'mlp_norm')(x)))
    x = nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_embed'))
    return x, (x if self.emit_hidden else None)


class UnrolledLayers(nn.Module):
  """``config.num_layers`` blocks called one after another, each with its own parameters
  (``layers/0``, ``layers/1``, ...): the ``model.scan_layers = False`` layout. Same interface as
  the ``nn.scan`` stack of :func:`layer_stack`."""
  config: Any
  block: Any  # Block, or Block under nn.remat
  emit_hidden: bool = False
  deterministic: bool = True
  decode: bool = False
  cache_len: int | None = None

  @nn.compact
  def __call__(self, x: Array, positions: Array, key_mask: Array | None
               ) -> tuple[Array, Array | None]:
    hidden = []
    for i in range(self.config.num_layers):
      x, h = self.block(self.config, self.emit_hidden, self.deterministic, self.decode,
                        self.cache_len, name=str(i))(x, positions, key_mask)
      hidden.append(h)
    return x, (jnp.stack(hidden) if self.emit_hidden else None)


def scans_layers(config: Any) -> bool:
  """``config.scan_layers`` (default True, for configs that predate the field)."""
  scan = getattr(config, 'scan_layers', True)
  if not isinstance(scan, (bool, np.bool_)):
    raise ValueError(f'model.scan_layers must be true or false, got {scan!r}')
  return bool(scan)


def layer_stack(config: Any, *, emit_hidden: bool = False, deterministic: bool = True,
                decode: bool = False, cache_len: int | None = None,
                name: str = 'layers') -> nn.Module:
  """``config.num_layers`` blocks with the configured remat policy: the transformer body Toto
  and LART share.

  With ``config.scan_layers`` (the default) the blocks run under ``nn.scan``, their parameters
  stacked on a leading ``layers`` axis: one compiled layer however deep the model, which is what
  a pod-scale run wants. Without it each block has its own parameters (``layers/0``, ...,
  :class:`UnrolledLayers`): compilation takes longer, but nothing is sliced out of or stacked
  into ``[layers, ...]`` arrays at run time. On 2 CPU cores that made cached decoding of
  ``base`` 2.2x faster (every step had copied each layer's weights out of the stack) and took
  0.2 s off each train step at 32 tokens. :func:`unstack_layers` and :func:`stack_layers`
  convert parameters (and decode caches) between the two layouts.

  Call it inside a parent's ``nn.compact`` method; the module it returns maps
  ``(x, positions, key_mask)`` (pass ``None`` for no mask) to ``(x, hidden)``, where ``hidden``
  stacks every layer's output ``[layers, batch, length, dim]`` when ``emit_hidden`` and is
  ``None`` otherwise. With ``decode`` every layer keeps a key/value cache of ``cache_len``
  (default ``config.max_len``) positions in the ``cache`` collection, laid out like the
  parameters; remat is off (decoding takes no gradients).
  """
  scan = scans_layers(config)
  block = Block
  if config.remat_policy != 'none' and not decode:
    if config.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'model.remat_policy must be one of {sorted(REMAT_POLICIES)}, '
                       f'got {config.remat_policy!r}')
    # prevent_cse only matters outside a scan, where XLA could merge the recomputation away.
    block = nn.remat(Block, policy=REMAT_POLICIES[config.remat_policy], prevent_cse=not scan)
  if not scan:
    return UnrolledLayers(config, block, emit_hidden, deterministic, decode, cache_len, name=name)
  layers = nn.scan(
      block,
      variable_axes={'params': 0, 'cache': 0},
      split_rngs={'params': True, 'dropout': True},
      in_axes=(nn.broadcast, nn.broadcast),
      length=config.num_layers,
      metadata_params={nn.PARTITION_NAME: 'layers'},
  )
  return layers(config, emit_hidden, deterministic, decode, cache_len, name=name)


def is_unrolled(layers: Any) -> bool:
  """Whether a ``layers`` subtree is in the ``scan_layers = False`` layout (``0``, ``1``, ...)."""
  return isinstance(layers, Mapping) and '0' in layers


def plain_params(params: Any) -> dict:
  """Toto parameters as a plain nested dict: ``nn.Partitioned`` boxes removed, a FrozenDict
  unfrozen, a ``{'params': ...}`` wrapper (as ``model.init`` returns) taken off."""
  params = nn.meta.unbox(params)
  if isinstance(params, flax.core.FrozenDict):
    params = flax.core.unfreeze(params)
  if 'params' in params and 'embed' not in params:
    params = params['params']
  return dict(params)


def unstack_layers(tree: Mapping, name: str = 'layers') -> dict:
  """A parameter tree (or decode cache) whose ``name`` entry holds arrays stacked on a leading
  layer axis (``scan_layers = True``) -> the same tree with ``name/0``, ``name/1``, ... holding
  each layer's arrays (``scan_layers = False``). A tree already in that layout comes back as
  it is. Works on NumPy and JAX arrays alike."""
  layers = tree[name]
  if is_unrolled(layers):
    return dict(tree)
  sizes = {x.shape[0] for x in jax.tree_util.tree_leaves(layers)}
  if len(sizes) != 1:
    raise ValueError(f'unstack_layers: the arrays under {name!r} do not share one leading '
                     f'layer axis (leading sizes {sorted(sizes)})')
  count = sizes.pop()
  return {**tree, name: {str(i): jax.tree_util.tree_map(lambda x, i=i: x[i], layers)
                         for i in range(count)}}


def stack_layers(tree: Mapping, name: str = 'layers') -> dict:
  """The inverse of :func:`unstack_layers`: ``name/0 .. name/{L-1}`` stacked on a leading axis.
  A tree already stacked comes back as it is."""
  layers = tree[name]
  if not is_unrolled(layers):
    return dict(tree)
  count = len(layers)
  if sorted(layers) != sorted(str(i) for i in range(count)):
    raise ValueError(f'stack_layers: the entries under {name!r} must be named 0..{count - 1}, '
                     f'got {sorted(layers)}')
  per_layer = [layers[str(i)] for i in range(count)]
  stack = np.stack if all(isinstance(x, np.ndarray)
                          for x in jax.tree_util.tree_leaves(per_layer)) else jnp.stack
  return {**tree, name: jax.tree_util.tree_map(lambda *xs: stack(xs), *per_layer)}


class Toto(nn.Module):
  """Decoder-only transformer: int32 tokens [batch, length] -> float32 logits [batch, length, V].

  ``V`` is the padded vocabulary; entries at and beyond ``config.vocab_size`` are never targets and
  the loss masks them. With ``return_hidden=True`` it also returns the residual stream after every
  layer (stacked [layers, batch, length, dim]) for probing.

  With ``decode=True`` (apply with ``mutable=['cache']``; :func:`init_cache` makes an empty cache)
  positions come from the cache's ``index`` and advance by the call's length; ``cache_len`` is the
  cache size in tokens (default ``config.max_len``).
  """
  config: Any
  decode: bool = False
  cache_len: int | None = None

  @nn.compact
  def __call__(self, tokens: Array, positions: Array | None = None,
               return_hidden: bool = False):
    cfg = self.config
    dtype = compute_dtype(cfg)
    vocab = padded_vocab_size(cfg.vocab_size)
    if self.decode:
      if positions is not None:
        raise ValueError('Toto(decode=True) takes its positions from the cache index; '
                         'do not pass positions')
      index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
      positions = jnp.broadcast_to(index.value + jnp.arange(tokens.shape[1], dtype=jnp.int32),
                                   tokens.shape)
      if not self.is_initializing():
        index.value = index.value + tokens.shape[1]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)

    embedding = self.param('embed', nn.with_logical_partitioning(
        nn.initializers.normal(stddev=0.02), ('vocab', 'embed')), (vocab, cfg.dim), jnp.float32)
    x = jnp.take(embedding, tokens, axis=0).astype(dtype)
    if cfg.arch == 'gpt2':
      x = x + jnp.asarray(sincos_positions(cfg.max_len, cfg.dim), dtype)[positions]
    x = nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_embed'))

    x, hidden = layer_stack(cfg, emit_hidden=return_hidden, decode=self.decode,
                            cache_len=self.cache_len)(x, positions, None)
    x = norm(cfg, 'final_norm')(x)
    logits = DenseGeneral((cfg.dim,), (vocab,), ('embed', 'vocab'), False, dtype,
                          name='lm_head')(x)
    if mup.enabled(cfg):  # muP readout: logits x 1/width_mult (toto_jax.mup)
      logits = logits * mup.readout_multiplier(cfg)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32),
                                        ('act_batch', 'act_length', 'act_vocab'))
    if return_hidden:
      return logits, hidden
    return logits


def cache_length(config, cache_len: int | None = None) -> int:
  """Tokens a decode cache holds: ``cache_len`` or ``config.max_len``; the GPT-2 variant's
  absolute position table stops at ``max_len``, so its cache cannot be longer."""
  length = int(cache_len or config.max_len)
  if length < 1:
    raise ValueError(f'cache length must be positive, got {length}')
  if config.arch == 'gpt2' and length > config.max_len:
    raise ValueError(f'a gpt2 cache of {length} tokens exceeds model.max_len ({config.max_len}): '
                     f'its sine-cosine position table has max_len rows')
  return length


def init_cache(config, batch: int, cache_len: int | None = None) -> dict:
  """An empty decode cache for ``batch`` sequences of up to ``cache_len`` tokens (default
  ``config.max_len``): ``{'index': 0, 'layers': {'attn': {'cached_key', 'cached_value'}}}`` with
  keys/values ``[layers, batch, cache_len, kv_heads, head_dim]`` in the compute dtype (with
  ``scan_layers`` False, ``'layers': {'0': {'attn': ...}, ...}`` without the leading axis). Built
  from shapes only (no parameter initialisation runs)."""
  length = cache_length(config, cache_len)
  model = Toto(config, decode=True, cache_len=length)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((batch, 1), jnp.int32)))
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])
