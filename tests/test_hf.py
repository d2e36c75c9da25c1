"""Hugging Face LLaMA conversion: Toto on imported weights matches a NumPy LlamaForCausalLM."""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toto as toto_configs
from toto_jax import hf
from toto_jax.model import Toto, padded_vocab_size

HF_CONFIG = {
    'model_type': 'llama',
    'vocab_size': 300,            # not a multiple of 128: exercises the padding
    'hidden_size': 64,
    'intermediate_size': 160,
    'num_hidden_layers': 3,
    'num_attention_heads': 4,
    'num_key_value_heads': 2,     # grouped key/value heads
    'rms_norm_eps': 1e-5,
    'rope_theta': 50000.0,
    'max_position_embeddings': 128,
    'hidden_act': 'silu',
    'rope_scaling': None,
    'attention_bias': False,
    'mlp_bias': False,
    'tie_word_embeddings': False,
}


# ---------------------------------------------------------------------------------------------
# NumPy float64 reference of transformers' LlamaForCausalLM.forward (no cache, no padding mask)
# ---------------------------------------------------------------------------------------------

def _rms_norm(x, weight, eps):
  variance = np.mean(x * x, axis=-1, keepdims=True)
  return weight * (x / np.sqrt(variance + eps))


def _rotate_half(x):
  half = x.shape[-1] // 2
  return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _repeat_kv(x, n_rep):
  # [b, kvh, t, hd] -> [b, kvh * n_rep, t, hd]: head i reads kv i // n_rep
  return np.repeat(x, n_rep, axis=1)


def _silu(x):
  return x / (1.0 + np.exp(-x))


def reference_forward(sd, c, tokens):
  """Logits [batch, length, vocab] of LlamaForCausalLM, all in float64."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  d, h = c['hidden_size'], c['num_attention_heads']
  kvh = c.get('num_key_value_heads') or h
  hd = d // h
  eps = c['rms_norm_eps']
  theta = c.get('rope_theta', 10000.0)
  b, t = tokens.shape

  x = sd['model.embed_tokens.weight'][tokens]                    # [b, t, d]
  inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
  freqs = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]
  emb = np.concatenate([freqs, freqs], axis=-1)                  # [t, hd]
  cos, sin = np.cos(emb)[None, None], np.sin(emb)[None, None]    # [1, 1, t, hd]
  mask = np.triu(np.full((t, t), -np.inf), k=1)

  for i in range(c['num_hidden_layers']):
    p = f'model.layers.{i}.'
    res = x
    y = _rms_norm(x, sd[p + 'input_layernorm.weight'], eps)
    q = (y @ sd[p + 'self_attn.q_proj.weight'].T).reshape(b, t, h, hd).transpose(0, 2, 1, 3)
    k = (y @ sd[p + 'self_attn.k_proj.weight'].T).reshape(b, t, kvh, hd).transpose(0, 2, 1, 3)
    v = (y @ sd[p + 'self_attn.v_proj.weight'].T).reshape(b, t, kvh, hd).transpose(0, 2, 1, 3)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k, v = _repeat_kv(k, h // kvh), _repeat_kv(v, h // kvh)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + mask  # [b, h, t, t]
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs = probs / probs.sum(-1, keepdims=True)
    attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, h * hd)
    x = res + attn @ sd[p + 'self_attn.o_proj.weight'].T
    res = x
    y = _rms_norm(x, sd[p + 'post_attention_layernorm.weight'], eps)
    mlp = _silu(y @ sd[p + 'mlp.gate_proj.weight'].T) * (y @ sd[p + 'mlp.up_proj.weight'].T)
    x = res + mlp @ sd[p + 'mlp.down_proj.weight'].T

  x = _rms_norm(x, sd['model.norm.weight'], eps)
  head = sd['model.embed_tokens.weight'] if c.get('tie_word_embeddings') else sd['lm_head.weight']
  return x @ head.T


def random_state_dict(c, seed=0):
  """Random float32 HF weights, scaled so activations stay O(1) through the stack."""
  rng = np.random.default_rng(seed)
  d, h = c['hidden_size'], c['num_attention_heads']
  kvh = c.get('num_key_value_heads') or h
  hd, m, v = d // h, c['intermediate_size'], c['vocab_size']

  def w(*shape):
    return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

  def norm(n):
    return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

  sd = {'model.embed_tokens.weight': rng.standard_normal((v, d)).astype(np.float32)}
  for i in range(c['num_hidden_layers']):
    p = f'model.layers.{i}.'
    sd[p + 'input_layernorm.weight'] = norm(d)
    sd[p + 'self_attn.q_proj.weight'] = 2.0 * w(h * hd, d)   # larger q: non-flat attention
    sd[p + 'self_attn.k_proj.weight'] = w(kvh * hd, d)
    sd[p + 'self_attn.v_proj.weight'] = w(kvh * hd, d)
    sd[p + 'self_attn.o_proj.weight'] = w(d, h * hd)
    sd[p + 'post_attention_layernorm.weight'] = norm(d)
    sd[p + 'mlp.gate_proj.weight'] = w(m, d)
    sd[p + 'mlp.up_proj.weight'] = w(m, d)
    sd[p + 'mlp.down_proj.weight'] = w(d, m)
  sd['model.norm.weight'] = norm(d)
  if not c.get('tie_word_embeddings'):
    sd['lm_head.weight'] = w(v, d)
  return sd


def _tokens(vocab, batch=2, length=24, seed=1):
  return np.random.default_rng(seed).integers(0, vocab, size=(batch, length)).astype(np.int32)


_FORWARDS = {}


def _toto_logits(params, cfg, tokens):
  """Toto logits through a jitted forward cached per config (eager ``apply`` recompiles the
  scanned layers on every call)."""
  key = cfg.to_json()
  if key not in _FORWARDS:
    _FORWARDS[key] = jax.jit(lambda p, t: Toto(cfg).apply({'params': p}, t))
  return np.asarray(_FORWARDS[key](params, jnp.asarray(tokens)))


def _check_against_reference(hf_config, seed=0):
  cfg = hf.config_from_hf(hf_config)
  sd = random_state_dict(hf_config, seed)
  tokens = _tokens(hf_config['vocab_size'])
  logits = _toto_logits(hf.params_from_hf(sd, cfg), cfg, tokens)
  assert logits.shape == (2, 24, padded_vocab_size(hf_config['vocab_size']))
  assert logits.dtype == np.float32
  ref = reference_forward(sd, hf_config, tokens)
  np.testing.assert_allclose(logits[..., :hf_config['vocab_size']], ref, rtol=1e-4, atol=1e-4)
  # The padded rows of lm_head are zero, so the padded logits are exactly zero.
  np.testing.assert_array_equal(logits[..., hf_config['vocab_size']:], 0.0)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

def test_config_from_hf_fields():
  cfg = hf.config_from_hf(HF_CONFIG)
  assert cfg.arch == 'llama'
  assert (cfg.vocab_size, cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.num_layers,
          cfg.mlp_dim) == (300, 64, 4, 2, 3, 160)
  assert cfg.rope_base == 50000.0 and cfg.norm_eps == 1e-5 and cfg.max_len == 128
  assert cfg.dtype == 'float32' and cfg.remat_policy == 'none' and cfg.causal is True
  assert cfg.attention_impl is None and cfg.tie_word_embeddings is False


def test_config_from_hf_defaults():
  minimal = {k: HF_CONFIG[k] for k in ('vocab_size', 'hidden_size', 'intermediate_size',
                                       'num_hidden_layers', 'num_attention_heads')}
  cfg = hf.config_from_hf(minimal)
  assert cfg.num_kv_heads == 4
  assert cfg.rope_base == 10000.0
  assert cfg.tie_word_embeddings is False
  # head_dim equal to hidden_size // heads is fine; newer rope_parameters dicts are read.
  cfg = hf.config_from_hf({**minimal, 'head_dim': 16,
                           'rope_parameters': {'rope_type': 'default', 'rope_theta': 1234.0}})
  assert cfg.rope_base == 1234.0


def test_config_round_trip():
  cfg = hf.config_from_hf(HF_CONFIG)
  back = hf.config_to_hf(cfg)
  for key, value in HF_CONFIG.items():
    assert back[key] == value, key
  assert back['head_dim'] == 16
  assert hf.config_from_hf(back).to_dict() == cfg.to_dict()
  assert json.loads(json.dumps(back)) == back          # writable as config.json
  # A full run config (with a ``model`` block) is accepted too, e.g. a Toto training config.
  run = toto_configs.get_config('tiny')
  assert hf.config_to_hf(run)['vocab_size'] == run.model.vocab_size
  assert hf.config_to_hf(run)['tie_word_embeddings'] is False


@pytest.mark.parametrize('key,value', [
    ('rope_scaling', {'rope_type': 'linear', 'factor': 2.0}),
    ('attention_bias', True),
    ('mlp_bias', True),
    ('hidden_act', 'gelu'),
    ('head_dim', 32),
    ('rope_parameters', {'rope_type': 'yarn', 'factor': 4.0, 'rope_theta': 10000.0}),
    ('model_type', 'qwen2'),
])
def test_config_from_hf_unsupported(key, value):
  with pytest.raises(ValueError, match=key):
    hf.config_from_hf({**HF_CONFIG, key: value})


def test_config_from_hf_missing_required():
  bad = dict(HF_CONFIG)
  del bad['hidden_size']
  with pytest.raises(ValueError, match='hidden_size'):
    hf.config_from_hf(bad)


def test_config_to_hf_rejects_gpt2():
  cfg = hf.config_from_hf(HF_CONFIG)
  cfg.arch = 'gpt2'
  with pytest.raises(ValueError, match='llama'):
    hf.config_to_hf(cfg)


# ---------------------------------------------------------------------------------------------
# Forward equivalence
# ---------------------------------------------------------------------------------------------

def test_reference_matches_toto_gqa():
  _check_against_reference(HF_CONFIG)


def test_reference_matches_toto_mha():
  _check_against_reference({**HF_CONFIG, 'num_key_value_heads': 4, 'rope_theta': 10000.0})


def test_reference_matches_toto_tied():
  c = {**HF_CONFIG, 'tie_word_embeddings': True}
  _check_against_reference(c)
  cfg = hf.config_from_hf(c)
  sd = random_state_dict(c)
  assert 'lm_head.weight' not in sd
  params = hf.params_from_hf(sd, cfg)
  np.testing.assert_array_equal(params['lm_head']['kernel'], params['embed'].T)
  # A tied model's torch state_dict() also lists lm_head.weight (the same tensor): accepted.
  p2 = hf.params_from_hf({**sd, 'lm_head.weight': sd['model.embed_tokens.weight']}, cfg)
  np.testing.assert_array_equal(p2['lm_head']['kernel'], params['lm_head']['kernel'])
  with pytest.raises(ValueError, match='lm_head.weight'):
    hf.params_from_hf({**sd, 'lm_head.weight': sd['model.embed_tokens.weight'] + 1.0}, cfg)
  # Export drops the (tied) head again.
  assert set(hf.params_to_hf(params, cfg)) == set(sd)


def test_params_from_hf_structure_matches_init():
  cfg = hf.config_from_hf(HF_CONFIG)
  params = hf.params_from_hf(random_state_dict(HF_CONFIG), cfg)
  init = jax.eval_shape(lambda: flax.linen.meta.unbox(
      Toto(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      flax.core.unfreeze(init))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), params, init)
  for leaf in jax.tree_util.tree_leaves(params):
    assert leaf.dtype == np.float32
  # The padding is zero.
  assert not params['embed'][300:].any() and not params['lm_head']['kernel'][:, 300:].any()


def test_params_in_the_unrolled_layout_import_and_export():
  """With ``model.scan_layers = False`` the imported tree is the unrolled model's own, computes
  what HF computes, and exports back to the same state dict."""
  cfg = hf.config_from_hf(HF_CONFIG)
  cfg.scan_layers = False
  sd = random_state_dict(HF_CONFIG)
  params = hf.params_from_hf(sd, cfg)
  assert sorted(params['layers']) == [str(i) for i in range(HF_CONFIG['num_hidden_layers'])]
  init = jax.eval_shape(lambda: flax.linen.meta.unbox(
      Toto(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      flax.core.unfreeze(init))
  tokens = _tokens(HF_CONFIG['vocab_size'])
  np.testing.assert_allclose(_toto_logits(params, cfg, tokens)[..., :HF_CONFIG['vocab_size']],
                             reference_forward(sd, HF_CONFIG, tokens), rtol=1e-4, atol=1e-4)
  back = hf.params_to_hf(params, cfg)
  for key, value in sd.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


# ---------------------------------------------------------------------------------------------
# Round trips and export
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('tied', [False, True])
def test_round_trip_hf_toto_hf(tied):
  c = {**HF_CONFIG, 'tie_word_embeddings': tied}
  cfg = hf.config_from_hf(c)
  sd = random_state_dict(c)
  back = hf.params_to_hf(hf.params_from_hf(sd, cfg), cfg)
  assert set(back) == set(sd)
  for key, value in sd.items():
    assert back[key].dtype == np.float32, key
    assert back[key].flags['C_CONTIGUOUS'], key
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_export_random_init_matches_reference():
  cfg = hf.config_from_hf(HF_CONFIG)
  tokens = _tokens(cfg.vocab_size, seed=3)
  # An 'rbg' key: the same Flax init, but XLA compiles it ~2x faster on CPU than threefry.
  boxed = jax.jit(Toto(cfg).init)(jax.random.key(7, impl='rbg'), jnp.asarray(tokens))['params']
  # The default init (std 0.02) makes near-uniform logits; scale it up so the check is sharp.
  plain = jax.tree_util.tree_map(lambda x: x * 10.0, flax.linen.meta.unbox(boxed))
  plain = flax.core.unfreeze(plain)
  plain['layers']['attn_norm']['scale'] = plain['layers']['attn_norm']['scale'] / 10.0
  plain['layers']['mlp_norm']['scale'] = plain['layers']['mlp_norm']['scale'] / 10.0
  plain['final_norm']['scale'] = plain['final_norm']['scale'] / 10.0
  logits = _toto_logits(plain, cfg, tokens)[..., :cfg.vocab_size]

  sd = hf.params_to_hf(plain, cfg)
  assert set(sd) == set(hf.hf_shapes(cfg))
  for key, shape in hf.hf_shapes(cfg).items():
    assert sd[key].shape == shape and sd[key].dtype == np.float32, key
  ref = reference_forward(sd, hf.config_to_hf(cfg), tokens)
  assert np.std(ref) > 0.1
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)

  # Boxed params (straight from init) export to the same thing as their unboxed arrays.
  sd_boxed = hf.params_to_hf(boxed, cfg)
  sd_plain = hf.params_to_hf(flax.linen.meta.unbox(boxed), cfg)
  sd_wrapped = hf.params_to_hf({'params': boxed}, cfg)
  for key in sd_plain:
    np.testing.assert_array_equal(sd_boxed[key], sd_plain[key])
    np.testing.assert_array_equal(sd_wrapped[key], sd_plain[key])


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def test_missing_key_raises():
  cfg = hf.config_from_hf(HF_CONFIG)
  sd = random_state_dict(HF_CONFIG)
  del sd['model.layers.1.mlp.up_proj.weight']
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(160, 64\)"):
    hf.params_from_hf(sd, cfg)
  sd = random_state_dict(HF_CONFIG)
  del sd['lm_head.weight']
  with pytest.raises(ValueError, match=r'lm_head\.weight'):
    hf.params_from_hf(sd, cfg)


def test_bad_shape_raises():
  cfg = hf.config_from_hf(HF_CONFIG)
  sd = random_state_dict(HF_CONFIG)
  # A checkpoint without GQA loaded with a GQA config: k_proj has 4 heads, not 2.
  sd['model.layers.0.self_attn.k_proj.weight'] = np.zeros((64, 64), np.float32)
  with pytest.raises(ValueError, match=r'model\.layers\.0\.self_attn\.k_proj\.weight.*\(32, 64\)'):
    hf.params_from_hf(sd, cfg)


def test_extra_keys_raise_but_inv_freq_is_ignored():
  cfg = hf.config_from_hf(HF_CONFIG)
  sd = random_state_dict(HF_CONFIG)
  sd['model.layers.0.self_attn.rotary_emb.inv_freq'] = np.zeros(8, np.float32)
  sd['model.rotary_emb.inv_freq'] = np.zeros(8, np.float32)
  hf.params_from_hf(sd, cfg)
  sd['model.layers.3.input_layernorm.weight'] = np.ones(64, np.float32)   # a 4th layer
  sd['model.layers.0.self_attn.q_proj.bias'] = np.zeros(64, np.float32)
  with pytest.raises(ValueError, match=r'unexpected.*model\.layers\.0\.self_attn\.q_proj\.bias'
                                       r'.*model\.layers\.3\.input_layernorm\.weight'):
    hf.params_from_hf(sd, cfg)


def test_params_to_hf_bad_shape_raises():
  cfg = hf.config_from_hf(HF_CONFIG)
  params = hf.params_from_hf(random_state_dict(HF_CONFIG), cfg)
  params['layers']['mlp']['down']['kernel'] = params['layers']['mlp']['down']['kernel'][:2]
  with pytest.raises(ValueError, match=r'layers/mlp/down/kernel.*\(3, 160, 64\)'):
    hf.params_to_hf(params, cfg)


def test_params_to_hf_untied_head_with_tied_config_raises():
  c = {**HF_CONFIG, 'tie_word_embeddings': True}
  cfg = hf.config_from_hf(c)
  params = hf.params_from_hf(random_state_dict(c), cfg)
  params['lm_head']['kernel'] = params['lm_head']['kernel'] * 2.0
  with pytest.raises(ValueError, match='tie_word_embeddings'):
    hf.params_to_hf(params, cfg)
