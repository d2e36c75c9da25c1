"""Toto decoder: causality, RoPE, grouped KV heads, remat, hidden states, dtypes, logical names,
layer layouts."""

import types

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
import numpy as np
import pytest

from configs import toto as toto_configs
from toto_jax import model as toto_model
from toto_jax.model import Toto, apply_rope, padded_vocab_size

VOCAB = 200


def small_config(arch='llama', **overrides):
  cfg = toto_configs.model_config('tiny', arch)
  cfg.vocab_size = VOCAB
  cfg.dim = 32
  cfg.num_heads = 4
  cfg.num_kv_heads = 4
  cfg.num_layers = 2
  cfg.mlp_dim = 64
  cfg.max_len = 32
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def tokens_for(batch=2, length=16, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, length)), jnp.int32)


def init_params(cfg, tokens, seed=0, scale=1.0):
  """Plain random params in the tree ``Toto(cfg).init`` makes (its shapes via ``eval_shape``).

  Drawn with NumPy rather than by running ``init``: compiling the init's RNG costs seconds per
  config on CPU. Kernels and embeddings get std ``0.02 * scale``, norm scales ``1 + 0.1 N(0, 1)``.
  """
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      Toto(cfg).init(jax.random.PRNGKey(0), tokens)['params']))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  rng = np.random.default_rng(seed)
  params = {}
  for path, leaf in flat.items():
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if 'norm' in '/'.join(path) and path[-1] == 'scale':
      params[path] = jnp.asarray(1.0 + 0.1 * noise)
    else:
      params[path] = jnp.asarray(0.02 * scale * noise)
  return flax.traverse_util.unflatten_dict(params)


def forward(cfg, **kwargs):
  """A jitted ``(params, tokens) -> logits``; reuse it so each config compiles once (un-jitted
  ``apply`` re-traces and re-compiles the scanned layers on every call)."""
  return jax.jit(lambda params, tokens: Toto(cfg).apply({'params': params}, tokens, **kwargs))


def apply(cfg, params, tokens, **kwargs):
  return forward(cfg, **kwargs)(params, tokens)


# ---------------------------------------------------------------------------------------------
# Causality
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch', ['llama', 'gpt2'])
def test_causality(arch):
  cfg = small_config(arch)
  tokens = tokens_for(length=16)
  params = init_params(cfg, tokens, scale=5.0)
  fwd = forward(cfg)
  base = np.asarray(fwd(params, tokens))
  for j in (0, 7, 15):
    changed = tokens.at[:, j].set((tokens[:, j] + 1) % VOCAB)
    out = np.asarray(fwd(params, changed))
    np.testing.assert_allclose(out[:, :j], base[:, :j], rtol=1e-6, atol=1e-6, err_msg=f'j={j}')
    assert np.abs(out[:, j:] - base[:, j:]).max(axis=-1).min() > 1e-4, f'j={j}'


# ---------------------------------------------------------------------------------------------
# Rotary positions
# ---------------------------------------------------------------------------------------------

def _rope_scores(q, k, q_pos, k_pos, base):
  """Scores <rope(q, m), rope(k, n)> for every m in q_pos, n in k_pos (q, k: [heads, hd])."""
  def rotate(x, pos):
    pos = jnp.asarray(pos, jnp.int32)[None]                       # [1, P]
    xs = jnp.broadcast_to(x, (1, pos.shape[1]) + x.shape)         # [1, P, heads, hd]
    return apply_rope(xs, pos, base)[0]                           # [P, heads, hd]
  return np.asarray(jnp.einsum('mhd,nhd->hmn', rotate(q, q_pos), rotate(k, k_pos)))


def test_rope_relative_position():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((3, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 16)), jnp.float32)
  base = 100.0
  pos = np.arange(12)
  scores = _rope_scores(q, k, pos, pos, base)
  for shift in (1, 5, 17):
    shifted = _rope_scores(q, k, pos + shift, pos + shift, base)
    np.testing.assert_allclose(shifted, scores, rtol=1e-4, atol=1e-4)
  # Scores depend only on m - n: every diagonal of the [m, n] matrix is constant ...
  for offset in range(-11, 12):
    diag = np.diagonal(scores, offset=offset, axis1=1, axis2=2)
    np.testing.assert_allclose(diag, diag[:, :1].repeat(diag.shape[1], 1), rtol=1e-4, atol=1e-4)
  # ... and different offsets give different scores.
  assert np.abs(scores[:, 5, 5] - scores[:, 5, 2]).min() > 1e-3
  assert np.abs(scores[:, 5, 2] - scores[:, 5, 1]).min() > 1e-3
  # Position 0 is the identity and rotation preserves norms.
  x = jnp.asarray(rng.standard_normal((2, 5, 3, 16)), jnp.float32)
  positions = jnp.asarray(rng.integers(0, 1000, (2, 5)), jnp.int32)
  np.testing.assert_allclose(apply_rope(x, jnp.zeros((2, 5), jnp.int32), base), x, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(apply_rope(x, positions, base), axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_half_split_layout():
  """Dimension i pairs with i + hd/2 and rotates by pos * base^(-2i/hd) (HF LLaMA layout)."""
  hd, base, pos = 8, 10000.0, 3
  x = np.zeros((1, 1, 1, hd), np.float32)
  x[..., 1] = 1.0                                                  # pair (1, 5)
  out = np.asarray(apply_rope(jnp.asarray(x), jnp.full((1, 1), pos, jnp.int32), base))[0, 0, 0]
  angle = pos * base ** (-2 * 1 / hd)
  expected = np.zeros(hd)
  expected[1], expected[5] = np.cos(angle), np.sin(angle)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_rope_base_changes_outputs():
  cfg = small_config(rope_base=10_000.0)
  tokens = tokens_for()
  params = init_params(cfg, tokens, scale=5.0)
  a = np.asarray(apply(cfg, params, tokens))
  b = np.asarray(apply(small_config(rope_base=50.0), params, tokens))
  # Position 0 is not rotated, so it is identical; later positions move.
  np.testing.assert_allclose(a[:, 0], b[:, 0], rtol=1e-5, atol=1e-5)
  assert np.abs(a[:, 1:] - b[:, 1:]).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Grouped key/value heads
# ---------------------------------------------------------------------------------------------

def test_grouped_kv_heads():
  cfg = small_config(num_heads=4, num_kv_heads=2)
  tokens = tokens_for()
  params = init_params(cfg, tokens, scale=5.0)
  L, D, H, KVH, hd = 2, 32, 4, 2, 8
  attn = params['layers']['attn']
  assert attn['query']['kernel'].shape == (L, D, H, hd)
  assert attn['key']['kernel'].shape == (L, D, KVH, hd)
  assert attn['value']['kernel'].shape == (L, D, KVH, hd)
  assert attn['out']['kernel'].shape == (L, H, hd, D)
  logits = np.asarray(apply(cfg, params, tokens))
  assert logits.shape == (2, 16, padded_vocab_size(VOCAB)) and np.isfinite(logits).all()

  # Equivalent to full multi-head attention with each KV head repeated for its query group
  # (query head i reads KV head i // (H // KVH), the HF repeat_kv convention).
  mha_cfg = small_config(num_heads=4, num_kv_heads=4)
  mha = flax.core.unfreeze(jax.tree_util.tree_map(lambda x: x, params))
  for name in ('key', 'value'):
    mha['layers']['attn'][name]['kernel'] = jnp.repeat(attn[name]['kernel'], H // KVH, axis=2)
  np.testing.assert_allclose(apply(mha_cfg, mha, tokens), logits, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Rematerialisation
# ---------------------------------------------------------------------------------------------

def _loss_and_grads(cfg, params, tokens):
  def loss_fn(p):
    logits = Toto(cfg).apply({'params': p}, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)), logits
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


def _remat_policies(cfg, params, tokens):
  """The ``policy`` of every checkpoint (remat) equation anywhere in the forward jaxpr."""
  closed = jax.make_jaxpr(lambda p: Toto(cfg).apply({'params': p}, tokens))(params)
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if 'policy' in eqn.params and 'prevent_cse' in eqn.params:
        found.append(eqn.params['policy'])
      for value in eqn.params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
          if isinstance(sub, jex_core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jex_core.Jaxpr):
            walk(sub)

  walk(closed.jaxpr)
  return found


def test_remat_policies_match():
  tokens = tokens_for(length=17)
  ref_cfg = small_config(remat_policy='none')
  params = init_params(ref_cfg, tokens[:, :-1], scale=5.0)
  assert _remat_policies(ref_cfg, params, tokens) == []
  (ref_loss, ref_logits), ref_grads = _loss_and_grads(ref_cfg, params, tokens)
  for policy in ('full', 'dots'):
    cfg = small_config(remat_policy=policy)
    # Same parameter tree under remat.
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        Toto(cfg).init(jax.random.PRNGKey(0), tokens)['params']))
    assert jax.tree_util.tree_structure(flax.core.unfreeze(shapes)) == \
        jax.tree_util.tree_structure(params), policy
    # The layer really is rematerialised, with the named policy.
    assert _remat_policies(cfg, params, tokens) == [toto_model.REMAT_POLICIES[policy]], policy
    (loss, logits), grads = _loss_and_grads(cfg, params, tokens)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5, err_msg=policy)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, err_msg=policy)
    jax.tree_util.tree_map(
        lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6, err_msg=policy),
        grads, ref_grads)


def test_bad_remat_policy_and_dtype_raise():
  tokens = tokens_for()
  with pytest.raises(ValueError, match='remat_policy'):
    Toto(small_config(remat_policy='everything')).init(jax.random.PRNGKey(0), tokens)
  with pytest.raises(ValueError, match='dtype'):
    Toto(small_config(dtype='float8')).init(jax.random.PRNGKey(0), tokens)


# ---------------------------------------------------------------------------------------------
# Hidden states, vocabulary padding, dtypes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch', ['llama', 'gpt2'])
def test_return_hidden(arch):
  cfg = small_config(arch, num_layers=3)
  tokens = tokens_for(batch=2, length=12)
  params = init_params(cfg, tokens, scale=5.0)
  logits, hidden = apply(cfg, params, tokens, return_hidden=True)
  assert hidden.shape == (3, 2, 12, 32)
  assert logits.shape == (2, 12, padded_vocab_size(VOCAB))
  if arch == 'llama':
    np.testing.assert_allclose(logits, apply(cfg, params, tokens), rtol=1e-6, atol=1e-6)
    # The last hidden state, final RMSNorm and the head give the logits.
    h = np.asarray(hidden[-1], np.float64)
    h = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + cfg.norm_eps)
    h = h * np.asarray(params['final_norm']['scale'])
    np.testing.assert_allclose(h @ np.asarray(params['lm_head']['kernel']), logits,
                               rtol=1e-4, atol=1e-4)


def test_padded_vocab():
  for v in (1, 127, 128, 129, 200, 300, 8196):
    p = padded_vocab_size(v)
    assert p % 128 == 0 and v <= p < v + 128, v
  assert padded_vocab_size(256) == 256
  cfg = small_config()
  tokens = tokens_for()
  params = init_params(cfg, tokens)
  assert params['embed'].shape == (256, 32)
  assert params['lm_head']['kernel'].shape == (32, 256)
  assert apply(cfg, params, tokens).shape == (2, 16, 256)


def test_bfloat16_compute():
  tokens = tokens_for()
  cfg32 = small_config(dtype='float32')
  params = init_params(cfg32, tokens, scale=5.0)
  ref = np.asarray(apply(cfg32, params, tokens))
  cfg16 = small_config(dtype='bfloat16')
  out = apply(cfg16, params, tokens)
  assert out.dtype == jnp.float32
  # Parameters are stored in float32 regardless of the compute dtype.
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      Toto(cfg16).init(jax.random.PRNGKey(0), tokens)['params']))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))
  out = np.asarray(out)
  assert np.isfinite(out).all()
  err = np.abs(out - ref).max()
  assert err < 0.05 * np.abs(ref).max(), (err, np.abs(ref).max())
  assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.999


# ---------------------------------------------------------------------------------------------
# Logical axis names
# ---------------------------------------------------------------------------------------------

LLAMA_NAMES = {
    'embed': ('vocab', 'embed'),
    'layers/attn_norm/scale': ('layers', 'embed'),
    'layers/attn/query/kernel': ('layers', 'embed', 'heads', 'head_dim'),
    'layers/attn/key/kernel': ('layers', 'embed', 'kv_heads', 'head_dim'),
    'layers/attn/value/kernel': ('layers', 'embed', 'kv_heads', 'head_dim'),
    'layers/attn/out/kernel': ('layers', 'heads', 'head_dim', 'embed'),
    'layers/mlp_norm/scale': ('layers', 'embed'),
    'layers/mlp/gate/kernel': ('layers', 'embed', 'mlp'),
    'layers/mlp/up/kernel': ('layers', 'embed', 'mlp'),
    'layers/mlp/down/kernel': ('layers', 'mlp', 'embed'),
    'final_norm/scale': ('embed',),
    'lm_head/kernel': ('embed', 'vocab'),
}


def _boxed_leaves(cfg, tokens):
  boxed = jax.eval_shape(lambda: Toto(cfg).init(jax.random.PRNGKey(0), tokens)['params'])
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(boxed))
  return {'/'.join(k): v for k, v in flat.items()}


def test_logical_names_llama():
  cfg = small_config(num_kv_heads=2)
  leaves = _boxed_leaves(cfg, tokens_for())
  assert set(leaves) == set(LLAMA_NAMES)
  for path, box in leaves.items():
    assert isinstance(box, nn.Partitioned), path
    assert tuple(box.names) == LLAMA_NAMES[path], path
    assert len(box.names) == box.value.ndim, path
  specs = nn.get_partition_spec(flax.traverse_util.unflatten_dict(
      {tuple(k.split('/')): v for k, v in leaves.items()}))
  assert tuple(specs['layers']['attn']['key']['kernel']) == LLAMA_NAMES['layers/attn/key/kernel']


def test_logical_names_gpt2():
  leaves = _boxed_leaves(small_config('gpt2'), tokens_for())
  for path, box in leaves.items():
    assert isinstance(box, nn.Partitioned), path
    assert len(box.names) == box.value.ndim, path
    if path.startswith('layers/'):
      assert box.names[0] == 'layers', path
  assert tuple(leaves['layers/attn/query/bias'].names) == ('layers', 'heads', 'head_dim')
  assert tuple(leaves['layers/mlp/up/bias'].names) == ('layers', 'mlp')
  assert tuple(leaves['layers/attn_norm/bias'].names) == ('layers', 'embed')
  assert 'layers/mlp/gate/kernel' not in leaves


# ---------------------------------------------------------------------------------------------
# Layer layouts: nn.scan (stacked) and unrolled (model.scan_layers = False)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch', ['llama', 'gpt2'])
def test_unrolled_layers_compute_what_the_scanned_stack_computes(arch):
  """Same parameters in the other layout: same logits, hidden states and gradients, and the
  unrolled model's own tree is exactly ``unstack_layers`` of the stacked one."""
  tokens = tokens_for(length=17)
  cfg, unrolled_cfg = small_config(arch, num_layers=3), small_config(arch, num_layers=3,
                                                                      scan_layers=False)
  params = init_params(cfg, tokens[:, :-1], scale=5.0)
  unrolled = toto_model.unstack_layers(params)
  assert sorted(unrolled['layers']) == ['0', '1', '2']
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      Toto(unrolled_cfg).init(jax.random.PRNGKey(0), tokens)['params']))
  assert jax.tree_util.tree_structure(flax.core.unfreeze(shapes)) == \
      jax.tree_util.tree_structure(unrolled)
  (loss, logits), grads = _loss_and_grads(cfg, params, tokens)
  (u_loss, u_logits), u_grads = _loss_and_grads(unrolled_cfg, unrolled, tokens)
  np.testing.assert_allclose(u_logits, logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(u_loss, loss, rtol=1e-6)
  jax.tree_util.tree_map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6),
                         toto_model.stack_layers(u_grads), grads)
  _, hidden = apply(cfg, params, tokens, return_hidden=True)
  _, u_hidden = apply(unrolled_cfg, unrolled, tokens, return_hidden=True)
  np.testing.assert_allclose(u_hidden, hidden, rtol=1e-5, atol=1e-5)


def test_unrolled_layers_take_the_remat_policy_per_layer():
  tokens = tokens_for(length=17)
  cfg = small_config(scan_layers=False, remat_policy='dots', num_layers=3)
  params = toto_model.unstack_layers(init_params(small_config(num_layers=3), tokens))
  assert _remat_policies(cfg, params, tokens) == [toto_model.REMAT_POLICIES['dots']] * 3
  (loss, _), _ = _loss_and_grads(cfg, params, tokens)
  (ref, _), _ = _loss_and_grads(small_config(scan_layers=False, num_layers=3), params, tokens)
  np.testing.assert_allclose(loss, ref, rtol=1e-6)


def test_unrolled_parameters_keep_their_logical_names_without_the_layers_axis():
  leaves = _boxed_leaves(small_config(num_kv_heads=2, scan_layers=False), tokens_for())
  for path, names in LLAMA_NAMES.items():
    if path.startswith('layers/'):
      for i in ('0', '1'):
        box = leaves[path.replace('layers/', f'layers/{i}/')]
        assert tuple(box.names) == names[1:], path
    else:
      assert tuple(leaves[path].names) == names, path


def test_stack_and_unstack_layers_round_trip_and_check_their_input():
  params = {'embed': np.ones((4, 2)), 'layers': {'w': np.arange(24.0).reshape(3, 4, 2),
                                                 'b': np.arange(6.0).reshape(3, 2)}}
  unrolled = toto_model.unstack_layers(params)
  np.testing.assert_array_equal(unrolled['layers']['2']['w'], params['layers']['w'][2])
  assert toto_model.unstack_layers(unrolled) == unrolled  # already unrolled: unchanged
  back = toto_model.stack_layers(unrolled)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
  assert isinstance(back['layers']['w'], np.ndarray)  # NumPy in, NumPy out
  with pytest.raises(ValueError, match='leading layer axis'):
    toto_model.unstack_layers({'layers': {'w': np.ones((3, 2)), 'b': np.ones((2,))}})
  with pytest.raises(ValueError, match='named 0..1'):
    toto_model.stack_layers({'layers': {'0': {'w': np.ones(2)}, '2': {'w': np.ones(2)}}})
  with pytest.raises(ValueError, match='scan_layers'):  # ConfigDicts already refuse a str
    toto_model.scans_layers(types.SimpleNamespace(scan_layers='no'))


@pytest.mark.parametrize('length, heads, kv_heads, block, dim', [
    (300, 4, 2, 128, 16), (64, 4, 4, 256, 16), (257, 2, 1, 64, 16),
    (130, 3, 1, None, 64), (257, 6, 3, None, 40), (5, 4, 2, None, 8)])  # None: the fused kernel
def test_cpu_attention_equals_reference(length, heads, kv_heads, block, dim):
  """The CPU attention paths are exact: values and gradients equal jax.nn.dot_product_attention
  (the blockwise XLA kernel at several block sizes; the compiled one, toto_jax/csrc, with grouped
  heads, partial tiles and a head_dim that is not a multiple of its vectors)."""
  from toto_jax import native
  from toto_jax.attention import blockwise_causal_attention, fused_causal_attention
  if block is None and not native.causal_attention_available():
    pytest.skip('no C++ compiler for the fused CPU attention kernel')
  rng = np.random.default_rng(length)
  q = jnp.asarray(rng.standard_normal((2, length, heads, dim)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, length, kv_heads, dim)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((2, length, kv_heads, dim)), jnp.float32)
  ours = (fused_causal_attention if block is None
          else lambda q, k, v: blockwise_causal_attention(q, k, v, block=block))
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(jax.jit(ours)(q, k, v), ref(q, k, v), atol=2e-5, rtol=1e-5)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
  g_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_blockwise_attention_keeps_no_score_matrix_for_backward():
  """Memory at long contexts: the backward pass keeps O(length) residuals (q, k, v, the output
  and one log-sum-exp per query), never a [length x length] array of probabilities."""
  from toto_jax.attention import blockwise_causal_attention
  length, heads = 512, 4
  q = jnp.ones((1, length, heads, 16), jnp.float32)
  _, backward = jax.vjp(lambda q, k, v: blockwise_causal_attention(q, k, v, block=128), q, q, q)
  sizes = [leaf.size for leaf in jax.tree.leaves(backward) if hasattr(leaf, 'size')]
  assert sizes and max(sizes) <= length * heads * 16
  assert sum(sizes) < length * length  # a single head's score matrix would already exceed it


def test_blockwise_attention_bfloat16():
  """bfloat16 in, bfloat16 out (gradients too), close to the float32 result."""
  from toto_jax.attention import blockwise_causal_attention
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 200, 2, 16)), jnp.float32) for _ in range(3))
  out32 = blockwise_causal_attention(q, k, v, block=64)
  cast = [a.astype(jnp.bfloat16) for a in (q, k, v)]
  out16 = blockwise_causal_attention(*cast, block=64)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=0.05)
  grads = jax.grad(lambda *a: blockwise_causal_attention(*a, block=64).astype(jnp.float32).sum(),
                   argnums=(0, 1, 2))(*cast)
  assert all(g.dtype == jnp.bfloat16 and bool(jnp.isfinite(g.astype(jnp.float32)).all())
             for g in grads)


def test_attention_impl_names_are_checked():
  from toto_jax.attention import dot_product_attention
  q = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ValueError, match='model.attention_impl'):
    dot_product_attention(q, q, q, causal=True, implementation='flash')


class _Stack(nn.Module):
  """The shared transformer body on raw embeddings, as LART uses it."""
  config: object
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, key_mask):
    positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    return toto_model.layer_stack(self.config, deterministic=self.deterministic)(
        x, positions, key_mask)[0]


def test_key_mask_hides_tokens_from_every_query():
  cfg = small_config('gpt2', causal=False)
  x = jax.random.normal(jax.random.key(0), (2, 10, cfg.dim))
  key_mask = jnp.ones((2, 10), bool).at[:, 3].set(False).at[1, 7].set(False)
  params = _Stack(cfg).init(jax.random.key(1), x, key_mask)
  out = _Stack(cfg).apply(params, x, key_mask)
  # Changing hidden tokens changes nothing for the others (and their own outputs still exist).
  x2 = x.at[:, 3].set(5.0).at[1, 7].set(-5.0)
  out2 = _Stack(cfg).apply(params, x2, key_mask)
  visible = np.asarray(key_mask)
  np.testing.assert_allclose(np.asarray(out)[visible], np.asarray(out2)[visible], atol=1e-5)
  # Without the mask the same change reaches every token.
  full = jnp.ones_like(key_mask)
  assert not np.allclose(_Stack(cfg).apply(params, x, full)[0, 0],
                         _Stack(cfg).apply(params, x2, full)[0, 0], atol=1e-4)


def test_dropout_and_drop_path_only_in_training():
  cfg = small_config('gpt2', causal=False, dropout=0.1, drop_path=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 6, cfg.dim))
  mask = jnp.ones((4, 6), bool)
  params = _Stack(cfg).init(jax.random.key(1), x, mask)
  reference = _Stack(small_config('gpt2', causal=False)).apply(params, x, mask)
  np.testing.assert_allclose(_Stack(cfg).apply(params, x, mask), reference, atol=1e-6)
  train = lambda seed: _Stack(cfg, deterministic=False).apply(
      params, x, mask, rngs={'dropout': jax.random.key(seed)})
  assert not np.allclose(train(0), reference, atol=1e-3)
  np.testing.assert_allclose(train(0), train(0))
  assert not np.allclose(train(0), train(1), atol=1e-3)
  # Drop path drops whole residual branches: at a rate near 1 only the input itself survives.
  off = small_config('gpt2', causal=False, drop_path=1.0 - 1e-7)
  skipped = _Stack(off, deterministic=False).apply(params, x, mask,
                                                  rngs={'dropout': jax.random.key(3)})
  np.testing.assert_allclose(skipped, x, atol=1e-5)


def _kept_elements(backward) -> int:
  """Array elements a ``jax.vjp`` backward function holds for the backward pass."""
  return sum(leaf.size for leaf in jax.tree.leaves(backward) if hasattr(leaf, 'shape'))


def test_swiglu_gradient_matches_autodiff_and_keeps_two_residuals():
  """The hand-written SwiGLU backward equals autodiff of ``silu(gate) * up`` and keeps only the
  two inputs (autodiff would also keep sigmoid(gate) and silu(gate))."""
  from toto_jax.model import swiglu
  rng = np.random.default_rng(0)
  gate, up, d_out = (jnp.asarray(4 * rng.standard_normal((3, 5, 16)), jnp.float32)
                     for _ in range(3))
  out, backward = jax.vjp(swiglu, gate, up)
  ref_out, ref_backward = jax.vjp(lambda g, u: jax.nn.silu(g) * u, gate, up)
  np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
  for ours, ref in zip(backward(d_out), ref_backward(d_out)):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  assert _kept_elements(backward) == 2 * gate.size
  grads16 = jax.grad(lambda g, u: swiglu(g, u).astype(jnp.float32).sum(), argnums=(0, 1))(
      gate.astype(jnp.bfloat16), up.astype(jnp.bfloat16))
  assert all(g.dtype == jnp.bfloat16 for g in grads16)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_rms_norm_gradient_matches_autodiff_and_keeps_no_normalised_copy(dtype):
  """The hand-written RMSNorm backward equals autodiff of the float32 formula; it keeps ``x``,
  one inverse RMS per row and the scale, not the normalised ``x`` as well."""
  from toto_jax.model import rms_norm

  def reference(x, scale, eps=1e-6):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * scale).astype(x.dtype)

  rng = np.random.default_rng(1)
  x = jnp.asarray(3 * rng.standard_normal((2, 7, 32)), dtype)
  scale = jnp.asarray(1 + 0.1 * rng.standard_normal(32), jnp.float32)
  d_out = jnp.asarray(rng.standard_normal((2, 7, 32)), dtype)
  out, backward = jax.vjp(lambda x, s: rms_norm(x, s, 1e-6), x, scale)
  ref_out, ref_backward = jax.vjp(reference, x, scale)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref_out, np.float32),
                             rtol=tol, atol=tol)
  for ours, ref in zip(backward(d_out), ref_backward(d_out)):
    assert ours.dtype == ref.dtype
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32),
                               rtol=tol, atol=tol * 5)
  assert _kept_elements(backward) == x.size + 2 * 7 + 32  # x, one per row, the scale


def test_gelu_gradient_matches_autodiff_and_keeps_only_its_input():
  from toto_jax.model import gelu
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 64)) * 3, jnp.float32)
  d_out = jnp.asarray(np.random.default_rng(3).standard_normal((4, 64)), jnp.float32)
  out, backward = jax.vjp(gelu, x)
  ref_out, ref_backward = jax.vjp(lambda x: jax.nn.gelu(x, approximate=True), x)
  np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(backward(d_out)[0], ref_backward(d_out)[0], rtol=1e-5, atol=1e-5)
  assert _kept_elements(backward) == x.size


def test_layer_norm_gradient_matches_autodiff_and_keeps_no_normalised_copy():
  from toto_jax.model import layer_norm

  def reference(x, scale, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias

  rng = np.random.default_rng(4)
  x = jnp.asarray(2 + 3 * rng.standard_normal((2, 7, 32)), jnp.float32)
  scale = jnp.asarray(1 + 0.1 * rng.standard_normal(32), jnp.float32)
  bias = jnp.asarray(0.1 * rng.standard_normal(32), jnp.float32)
  d_out = jnp.asarray(rng.standard_normal((2, 7, 32)), jnp.float32)
  out, backward = jax.vjp(lambda x, s, b: layer_norm(x, s, b, 1e-5), x, scale, bias)
  ref_out, ref_backward = jax.vjp(reference, x, scale, bias)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  for ours, ref in zip(backward(d_out), ref_backward(d_out)):
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
  assert _kept_elements(backward) == x.size + 2 * 2 * 7 + 32  # x, mean and 1/std, scale
