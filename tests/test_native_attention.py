"""The compiled CPU attention kernel (toto_jax/csrc/causal_attention.cc via toto_jax.native):
exactly causal, NaN-preserving, chosen automatically only where it applies, built atomically into
its cache, and replaced by the XLA path with a warning where it cannot be built. Its values and
gradients against jax.nn.dot_product_attention: tests/test_model.py."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toto_jax import attention, native

pytestmark = pytest.mark.skipif(not native.causal_attention_available(),
                                reason='no C++ compiler for the fused CPU attention kernel')


def _qkv(batch, length, heads, kv_heads, dim, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal((batch, length, h, dim)), jnp.float32)
               for h in (heads, kv_heads, kv_heads))


def _reference(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def test_fused_attention_is_exactly_causal():
  """Changing the last tokens' queries, keys and values leaves every earlier output bit-identical
  (masked scores get exactly zero probability, not a tiny one)."""
  q, k, v = _qkv(1, 150, 2, 2, 32)
  changed = tuple(x.at[:, 100:].set(x[:, 100:] * 7.0 + 3.0) for x in (q, k, v))
  before = attention.fused_causal_attention(q, k, v)
  after = attention.fused_causal_attention(*changed)
  np.testing.assert_array_equal(before[:, :100], after[:, :100])
  assert not np.allclose(before[:, 100:], after[:, 100:])


def test_fused_attention_propagates_nan_exactly_where_the_reference_does():
  """A NaN key reaches exactly the queries that can see it; a NaN query only its own row, not
  the other query heads that share its key/value head (they reuse the kernel's buffers)."""
  q, k, v = _qkv(1, 80, 2, 2, 16)
  k = k.at[0, 30, 1, 0].set(jnp.nan)
  ours = np.isnan(np.asarray(attention.fused_causal_attention(q, k, v))).any(-1)
  np.testing.assert_array_equal(ours, np.isnan(np.asarray(_reference(q, k, v))).any(-1))
  assert ours[0, 30:, 1].all() and not ours[0, :30].any() and not ours[0, :, 0].any()
  q, k, v = _qkv(1, 80, 2, 1, 16)
  q = q.at[0, 10, 0, 3].set(jnp.nan)
  ours = np.isnan(np.asarray(attention.fused_causal_attention(q, k, v))).any(-1)
  assert ours[0, 10, 0] and ours.sum() == 1


def _uses_kernel(fn, *args) -> bool:
  return native.FORWARD_TARGET in jax.jit(fn).lower(*args).as_text()


def test_auto_picks_the_kernel_only_where_it_applies():
  q, k, v = _qkv(2, 40, 4, 2, 16)
  auto = lambda q, k, v: attention.dot_product_attention(q, k, v, causal=True)
  assert _uses_kernel(auto, q, k, v)
  # bfloat16 keeps the XLA path (the kernel is float32) ...
  assert not _uses_kernel(auto, *(x.astype(jnp.bfloat16) for x in (q, k, v)))
  # ... and so does a multi-device mesh: a custom call has no partitioning rule.
  mesh = jax.make_mesh((2,), ('data',), devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    assert not _uses_kernel(auto, q, k, v)
  # Forced, it takes bfloat16 through float32 and returns bfloat16.
  forced = lambda q, k, v: attention.dot_product_attention(q, k, v, causal=True,
                                                           implementation='fused_cpu')
  out = forced(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _reference(q, k, v), atol=0.05)
  with pytest.raises(ValueError, match='causal attention without a key mask'):
    attention.dot_product_attention(q, k, v, causal=False, implementation='fused_cpu')


def test_build_is_cached_under_a_hashed_name_and_leaves_no_temporary(tmp_path, monkeypatch):
  monkeypatch.setenv('TOTO_JAX_KERNEL_CACHE', str(tmp_path))
  native._load_causal_attention.cache_clear()
  try:
    assert native.causal_attention_available()
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith('causal_attention-')
    stamp = os.stat(built[0]).st_mtime_ns
    native._load_causal_attention.cache_clear()
    assert native.causal_attention_available()  # found, not rebuilt
    assert list(tmp_path.iterdir()) == built and os.stat(built[0]).st_mtime_ns == stamp
  finally:
    native._load_causal_attention.cache_clear()


def test_without_a_compiler_auto_falls_back_and_forcing_says_why(tmp_path, monkeypatch):
  monkeypatch.setenv('TOTO_JAX_KERNEL_CACHE', str(tmp_path))
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  native._load_causal_attention.cache_clear()
  native._warn_once.cache_clear()
  try:
    q, k, v = _qkv(1, 20, 2, 2, 16)
    with pytest.warns(RuntimeWarning, match='no-such-compiler'):
      out = attention.dot_product_attention(q, k, v, causal=True)
    np.testing.assert_allclose(out, _reference(q, k, v), atol=2e-5)
    with pytest.raises(ValueError, match="attention_impl='fused_cpu' cannot be used here"):
      attention.dot_product_attention(q, k, v, causal=True, implementation='fused_cpu')
    with pytest.raises(native.NativeUnavailable, match='no-such-compiler'):
      attention.fused_causal_attention(q, k, v)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv('TOTO_JAX_NATIVE', '0')
    native._load_causal_attention.cache_clear()
    with pytest.raises(native.NativeUnavailable, match='TOTO_JAX_NATIVE=0'):
      native.require_causal_attention()
  finally:
    native._load_causal_attention.cache_clear()
    native._warn_once.cache_clear()
