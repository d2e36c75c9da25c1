"""The project's one attention function: ``[batch, length, heads, head_dim]`` in and out.

On GPUs and TPUs it is ``jax.nn.dot_product_attention`` (cuDNN's fused kernel on NVIDIA GPUs when
``implementation='cudnn'`` or when XLA picks it). On CPU, XLA's attention materialises the full
``length x length`` score matrix and spends most of its time in the softmax over the masked half.
There, causal float32 attention goes to ``fused_cpu``, a compiled kernel
(``csrc/causal_attention.cc``, built on first use by :mod:`toto_jax.native`) that keeps every
score tile in the caches. Where it cannot be built, or for other dtypes, the pure-XLA
``blockwise`` path computes causal attention one block of queries at a time against only the
keys it can see, and its backward pass recomputes the probabilities from the saved log-sum-exp
(the flash-attention recipe) instead of keeping them: the residuals are O(length), not
O(length^2) (at 4097 tokens, 12 heads, keeping them would take 0.4 GB per layer). Grouped
key/value heads are supported by every path.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from toto_jax import native

IMPLEMENTATIONS = (None, 'xla', 'cudnn', 'blockwise', 'fused_cpu')
CAUSAL_ONLY = ('blockwise', 'fused_cpu')  # causal attention without a key mask only

# Query rows per block on CPU. A 12-layer stack of attention at length 1024, 12 heads, forward +
# backward, one interleaved run on 2 cores: 1.79 s with 128, 2.10 s with 64, and 2.53 s for the
# autodiff kernel with 256-query blocks that this replaced (which kept the probabilities).
BLOCK = 128


def _queries_head_major(x: jax.Array, kv_heads: int) -> jax.Array:
  """``[batch, length, heads, dim]`` -> ``[batch, kv_heads, group, length, dim]``."""
  b, t, h, d = x.shape
  return jnp.transpose(x.reshape(b, t, kv_heads, h // kv_heads, d), (0, 2, 3, 1, 4))


def _head_major(q: jax.Array, k: jax.Array, v: jax.Array):
  """``q`` as ``[batch, kv_heads, group, length, dim]``, ``k``/``v`` as ``[batch, kv_heads,
  length, dim]``: every block's matmul is then a plain batched GEMM."""
  return (_queries_head_major(q, k.shape[2]), jnp.transpose(k, (0, 2, 1, 3)),
          jnp.transpose(v, (0, 2, 1, 3)))


def _from_head_major(x: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  b, t, h, d = shape
  return jnp.transpose(x, (0, 3, 1, 2, 4)).reshape(b, t, h, d).astype(dtype)


def _query_blocks(length: int, block: int) -> list[tuple[int, int]]:
  return [(lo, min(lo + block, length)) for lo in range(0, length, block)]


def _causal_scores(qi: jax.Array, kt: jax.Array, lo: int, hi: int, scale: float) -> jax.Array:
  """Scaled float32 scores of queries ``lo..hi-1`` against keys ``0..hi-1``, the future masked."""
  s = jnp.einsum('bkgqd,bksd->bkgqs', qi, kt[:, :, :hi], preferred_element_type=jnp.float32)
  visible = jnp.arange(lo, hi)[:, None] >= jnp.arange(hi)[None, :]
  return jnp.where(visible, s * scale, -jnp.inf)


def _blockwise_forward(q: jax.Array, k: jax.Array, v: jax.Array, block: int):
  scale = 1.0 / math.sqrt(q.shape[-1])
  qt, kt, vt = _head_major(q, k, v)
  outs, lses = [], []
  for lo, hi in _query_blocks(q.shape[1], block):
    s = _causal_scores(qt[:, :, :, lo:hi], kt, lo, hi, scale)
    row_max = s.max(-1, keepdims=True)
    p = jnp.exp(s - row_max)
    denom = p.sum(-1, keepdims=True)
    o = jnp.einsum('bkgqs,bksd->bkgqd', p.astype(v.dtype), vt[:, :, :hi],
                   preferred_element_type=jnp.float32) / denom
    outs.append(o.astype(q.dtype))
    lses.append(row_max + jnp.log(denom))
  out_t = jnp.concatenate(outs, axis=3)
  # Residuals stay head-major, so the backward pass does not transpose q, k and v again.
  return (_from_head_major(out_t, q.shape, q.dtype),
          (qt, kt, vt, out_t, jnp.concatenate(lses, axis=3)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blockwise_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                               block: int = BLOCK) -> jax.Array:
  """Exact causal softmax attention, one block of ``block`` queries at a time.

  Each query block is scored against the keys up to its end only, so the masked upper triangle
  beyond the diagonal block is never computed. The backward pass recomputes each block's
  probabilities from the saved log-sum-exp. ``k``/``v`` may have fewer heads than ``q``
  (grouped key/value heads).
  """
  return _blockwise_forward(q, k, v, block)[0]


def _sum_over_queries(a: jax.Array, b: jax.Array) -> jax.Array:
  """``sum over (group, query) of a[..., s] * b[..., d]`` -> ``[batch, kv_heads, keys, dim]``.

  The group and query axes are merged first: XLA canonicalises a matmul that contracts two axes
  by transposing its operands, and on CPU that meant copying every ``[queries x keys]`` block
  transposed. Merged, the attention alone (forward + backward) takes 0.82x the time with 3
  query heads per key/value head; with one (``base``) the step time is unchanged."""
  bsz, kvh, g, q, _ = a.shape
  return jnp.einsum('bkqs,bkqd->bksd', a.reshape(bsz, kvh, g * q, -1),
                    b.reshape(bsz, kvh, g * q, -1))


def _blockwise_backward(block: int, residuals, d_out: jax.Array):
  qt, k_t, v_t, out_t, lse = residuals
  f32 = jnp.float32
  scale = 1.0 / math.sqrt(qt.shape[-1])
  kt, vt = k_t.astype(f32), v_t.astype(f32)
  d_out_t = _queries_head_major(d_out, kt.shape[1]).astype(f32)
  # d softmax: dS = P * (dP - rowsum(dO * O)), the row sums once for all blocks.
  delta = (d_out_t * out_t.astype(f32)).sum(-1, keepdims=True)
  dq_blocks, dk, dv = [], jnp.zeros(kt.shape, f32), jnp.zeros(vt.shape, f32)
  for lo, hi in _query_blocks(qt.shape[3], block):
    qi = qt[:, :, :, lo:hi]
    p = jnp.exp(_causal_scores(qi, kt, lo, hi, scale) - lse[:, :, :, lo:hi])
    d_oi = d_out_t[:, :, :, lo:hi]
    dv = dv.at[:, :, :hi].add(_sum_over_queries(p, d_oi))
    dp = jnp.einsum('bkgqd,bksd->bkgqs', d_oi, vt[:, :, :hi])
    ds = p * (dp - delta[:, :, :, lo:hi]) * scale
    dq_blocks.append(jnp.einsum('bkgqs,bksd->bkgqd', ds, kt[:, :, :hi]))
    dk = dk.at[:, :, :hi].add(_sum_over_queries(ds, qi.astype(f32)))
  b, kvh, g, t, d = qt.shape
  dq = _from_head_major(jnp.concatenate(dq_blocks, axis=3), (b, t, kvh * g, d), qt.dtype)
  return (dq, jnp.transpose(dk, (0, 2, 1, 3)).astype(k_t.dtype),
          jnp.transpose(dv, (0, 2, 1, 3)).astype(v_t.dtype))


blockwise_causal_attention.defvjp(_blockwise_forward, _blockwise_backward)


def _fused_forward(q: jax.Array, k: jax.Array, v: jax.Array):
  native.require_causal_attention()  # built and registered once per process; says why not
  b, t, h, _ = q.shape
  out, lse = jax.ffi.ffi_call(
      native.FORWARD_TARGET,
      (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, h, t), jnp.float32)),
      vmap_method='sequential')(q, k, v)
  return out, (q, k, v, out, lse)


def _fused_backward(residuals, d_out: jax.Array):
  q, k, v, out, lse = residuals
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
  return tuple(jax.ffi.ffi_call(native.BACKWARD_TARGET, shapes, vmap_method='sequential')(
      q, k, v, out, lse, d_out.astype(jnp.float32)))


@jax.custom_vjp
def fused_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Exact causal softmax attention in one compiled CPU call per pass (float32; ``k``/``v`` may
  have fewer heads than ``q``). The backward pass recomputes the probabilities from the saved
  log-sum-exp, like :func:`blockwise_causal_attention`. Raises
  :class:`toto_jax.native.NativeUnavailable` where the kernel cannot be built."""
  return _fused_forward(q, k, v)[0]


fused_causal_attention.defvjp(_fused_forward, _fused_backward)


def _fused_cpu_applies(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
  """The compiled kernel runs whole arrays on one device: float32, and no multi-device mesh
  (a custom call has no partitioning rule, so sharded callers keep the XLA path)."""
  mesh = jax.sharding.get_abstract_mesh()
  return (all(x.dtype == jnp.float32 for x in (q, k, v)) and (mesh.empty or mesh.size == 1)
          and native.causal_attention_available())


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool,
                          implementation: str | None = None,
                          key_mask: jax.Array | None = None) -> jax.Array:
  """Softmax attention with the implementation chosen by name, or by backend when ``None``: for
  causal attention on CPU ``fused_cpu`` where it applies (float32, one device, kernel built),
  else ``blockwise``; ``jax.nn.dot_product_attention`` elsewhere.

  ``key_mask`` (bool ``[batch, keys]``) hides keys from every query (missing tokens); each query
  must see at least one key. It goes through ``jax.nn.dot_product_attention``.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'model.attention_impl must be one of {IMPLEMENTATIONS}, '
                     f'got {implementation!r}')
  if implementation is None and causal and jax.default_backend() == 'cpu' and key_mask is None:
    implementation = 'fused_cpu' if _fused_cpu_applies(q, k, v) else 'blockwise'
  if implementation in CAUSAL_ONLY and (not causal or key_mask is not None):
    raise ValueError(f"model.attention_impl={implementation!r} is for causal attention without a "
                     "key mask only")
  if implementation == 'fused_cpu':
    try:
      native.require_causal_attention()
    except native.NativeUnavailable as e:
      raise ValueError(f"model.attention_impl='fused_cpu' cannot be used here: {e}") from e
    dtype = q.dtype
    f32 = lambda x: x.astype(jnp.float32)
    return fused_causal_attention(f32(q), f32(k), f32(v)).astype(dtype)
  if implementation == 'blockwise':
    return blockwise_causal_attention(q, k, v)
  mask = None if key_mask is None else key_mask[:, None, None, :]  # [batch, heads, q, k]
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, mask=mask,
                                      implementation=implementation)
