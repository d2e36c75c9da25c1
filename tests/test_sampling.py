"""Toto decoding: the key/value cache equals a full recompute; filtering; sampling; sliding windows."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toto as toto_configs
from toto_jax import data as token_data
from toto_jax import sampling
from toto_jax import model as toto_model
from toto_jax.model import Toto, init_cache

VOCAB = 40  # 36 codes + 4 reserved ids; the embedding is padded to 128 rows


def small_config(arch='llama', kv_heads=4, max_len=24):
  cfg = toto_configs.model_config('tiny', arch)
  cfg.vocab_size = VOCAB
  cfg.dim, cfg.num_heads, cfg.num_kv_heads = 32, 4, kv_heads
  cfg.num_layers, cfg.mlp_dim, cfg.max_len = 2, 64, max_len
  return cfg


def random_params(cfg, seed=0, scale=0.3):
  """Params in ``Toto(cfg)``'s tree, drawn with NumPy (no init compile); a large ``scale`` makes
  the logits far from uniform so that greedy choices are clear-cut."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      Toto(cfg).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))['params']))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), shapes)


@pytest.mark.parametrize('arch,kv_heads', [('llama', 2), ('gpt2', 2)])  # grouped: 4 q, 2 kv heads
def test_cache_equals_recompute(arch, kv_heads):
  cfg = small_config(arch, kv_heads)
  params = random_params(cfg)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (2, 16)), jnp.int32)
  full = jax.jit(Toto(cfg).apply)({'params': params}, tokens)
  decode = jax.jit(lambda p, c, t: Toto(cfg, decode=True).apply({'params': p, 'cache': c}, t,
                                                                mutable=['cache']))
  cache = init_cache(cfg, 2)
  assert cache['layers']['attn']['cached_key'].shape == (2, 2, cfg.max_len, kv_heads, 8)
  pieces = []
  # Prefill 7 tokens, one chunk of 3, then single tokens: positions continue from the cache index.
  for lo, hi in [(0, 7), (7, 10)] + [(t, t + 1) for t in range(10, 16)]:
    logits, variables = decode(params, cache, tokens[:, lo:hi])
    cache = variables['cache']
    pieces.append(logits)
  assert int(cache['index']) == 16
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


def test_decode_rejects_positions_and_long_gpt2_cache():
  cfg = small_config('gpt2')
  with pytest.raises(ValueError, match='max_len'):
    init_cache(cfg, 1, cache_len=cfg.max_len + 1)
  with pytest.raises(ValueError, match='positions'):
    Toto(cfg, decode=True).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                                positions=jnp.zeros((1, 2), jnp.int32))


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.asarray([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]]))
  keep = lambda x: np.isfinite(np.asarray(x))
  np.testing.assert_array_equal(keep(sampling.filter_top_k(logits, 2)),
                                [[0, 1, 0, 1], [1, 1, 1, 1]])  # ties with the k-th are kept
  np.testing.assert_array_equal(keep(sampling.filter_top_k(logits, 0)), np.ones((2, 4)))
  np.testing.assert_array_equal(keep(sampling.filter_top_k(logits, 9)), np.ones((2, 4)))
  # Nucleus: 0.4 < 0.5 so 0.3 joins; 0.4 + 0.3 >= 0.5 stops there.
  np.testing.assert_array_equal(keep(sampling.filter_top_p(logits[:1], 0.5)), [[0, 1, 0, 1]])
  np.testing.assert_array_equal(keep(sampling.filter_top_p(logits[:1], 0.4)), [[0, 1, 0, 0]])
  np.testing.assert_array_equal(keep(sampling.filter_top_p(logits[:1], 0.05)), [[0, 1, 0, 0]])
  np.testing.assert_array_equal(keep(sampling.filter_top_p(logits[:1], 0.95)), [[1, 1, 1, 1]])
  np.testing.assert_array_equal(keep(sampling.filter_top_p(logits[:1], 1.0)), [[1, 1, 1, 1]])
  # Kept logits are unchanged, and the settings may be traced.
  jitted = jax.jit(lambda x, k, p: sampling.filter_top_p(sampling.filter_top_k(x, k), p))
  out = np.asarray(jitted(logits[:1], 3, 0.6))
  np.testing.assert_array_equal(keep(out), [[0, 1, 0, 1]])
  np.testing.assert_allclose(out[0, [1, 3]], np.log([0.4, 0.3]), rtol=1e-6)
  np.testing.assert_array_equal(keep(sampling.restrict_ids(logits, 1, 3)), [[0, 1, 1, 0]] * 2)


def test_sample_logits_distribution():
  logits = jnp.broadcast_to(jnp.log(jnp.asarray([0.5, 0.3, 0.15, 0.05])), (20000, 4))
  draw = lambda **kw: np.asarray(sampling.sample_logits(logits, jax.random.key(0), **kw))
  np.testing.assert_array_equal(draw(temperature=0.0), 0)
  np.testing.assert_array_equal(draw(top_k=1), 0)
  freq = np.bincount(draw(), minlength=4) / 20000
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)
  freq = np.bincount(draw(top_p=0.7), minlength=4) / 20000  # keeps 0.5 + 0.3, renormalised
  np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.015)
  freq = np.bincount(draw(top_k=3, temperature=0.5), minlength=4) / 20000
  p = np.array([0.5, 0.3, 0.15]) ** 2
  np.testing.assert_allclose(freq[:3], p / p.sum(), atol=0.015)
  assert freq[3] == 0


def test_sample_cached_equals_uncached():
  cfg = small_config('llama', 2, max_len=32)
  params = random_params(cfg)
  prompt = np.random.default_rng(2).integers(4, VOCAB, (2, 5))
  run = lambda **kw: sampling.sample(cfg, params, prompt, 20, rng=jax.random.key(3), **kw)
  greedy = run(temperature=0.0)
  assert greedy.shape == (2, 25) and greedy.dtype == np.int32
  np.testing.assert_array_equal(greedy[:, :5], prompt)
  assert greedy[:, 5:].min() >= token_data.NUM_RESERVED and greedy.max() < VOCAB
  assert len(np.unique(greedy[:, 5:])) > 3  # not a constant continuation
  np.testing.assert_array_equal(run(temperature=0.0, use_cache=False), greedy)
  np.testing.assert_array_equal(run(temperature=1.0, top_k=1), greedy)
  # Sampling: the same key per step on both paths, so the same draws up to float rounding.
  drawn = run(temperature=1.0, top_p=0.9)
  assert (drawn[:, 5:] != greedy[:, 5:]).any()
  assert (run(temperature=1.0, top_p=0.9, use_cache=False) == drawn).mean() > 0.9
  with pytest.raises(ValueError, match='max_len'):
    sampling.sample(cfg, params, prompt, 29, rng=jax.random.key(0))
  with pytest.raises(ValueError, match='top_p'):
    sampling.sample(cfg, params, prompt, 2, rng=jax.random.key(0), top_p=0.0)


def test_sampling_runs_the_layers_unrolled_from_either_layout():
  """Stacked (scan_layers) parameters are unrolled once per call; the tokens are those of a
  model that was unrolled all along, and its decode cache holds one entry per layer."""
  cfg = small_config('llama', 2, max_len=32)
  params = random_params(cfg)
  unrolled_cfg = small_config('llama', 2, max_len=32)
  unrolled_cfg.scan_layers = False
  run_cfg, run_params = sampling._unrolled(cfg, {'params': params})
  assert run_cfg.scan_layers is False and cfg.scan_layers is True  # the caller's config is kept
  assert sorted(run_params['layers']) == ['0', '1']
  assert init_cache(run_cfg, 2)['layers']['1']['attn']['cached_key'].shape == (2, 32, 2, 8)
  prompt = np.random.default_rng(2).integers(4, VOCAB, (2, 5))
  run = lambda c, p, **kw: sampling.sample(c, p, prompt, 12, rng=jax.random.key(3),
                                           temperature=0.0, **kw)
  greedy = run(cfg, params)
  np.testing.assert_array_equal(run(unrolled_cfg, toto_model.unstack_layers(params)), greedy)
  np.testing.assert_array_equal(run(cfg, params, use_cache=False), greedy)


def test_generate_frames_slides_beyond_the_context():
  cfg = small_config('llama', 2, max_len=13)  # 3 frames of 4 tokens fit (12 input positions)
  params = random_params(cfg, seed=4)
  prompt = np.random.default_rng(5).integers(0, 30, (2, 1, 4))
  kw = dict(frame_tokens=4, rng=jax.random.key(0), temperature=0.0, codebook_size=30,
            progress=False)
  frames = sampling.generate_frames(cfg, params, prompt, 6, **kw)
  assert frames.shape == (2, 7, 4)  # 7 frames * 4 tokens + marker = 29 > max_len
  np.testing.assert_array_equal(frames[:, :1], prompt)
  assert frames.min() >= 0 and frames.max() < 30
  # Frames 2-3 continue the prompt in one pass; every later frame is generated from
  # [start] + the 2 frames before it, positions from 0.
  ids = lambda f: np.concatenate([np.full((2, 1), token_data.VIDEO_START),
                                  f.reshape(2, -1) + token_data.NUM_RESERVED], axis=1)
  for t in range(3, 7):
    out = sampling._sample(cfg, params, ids(frames[:, t - 2:t]), 4, rng=jax.random.key(0),
                           temperature=0.0, top_k=0, top_p=1.0, use_cache=True,
                           id_range=(4, 34))
    np.testing.assert_array_equal(out[:, -4:] - token_data.NUM_RESERVED, frames[:, t])
  # A window of 2 frames: every new frame sees only the one before it.
  short = sampling.generate_frames(cfg, params, prompt, 3, context_frames=2, **kw)
  assert short.shape == (2, 4, 4)
  np.testing.assert_array_equal(short[:, :2], frames[:, :2])
  out = sampling._sample(cfg, params, ids(short[:, 2:3]), 4, rng=jax.random.key(0),
                         temperature=0.0, top_k=0, top_p=1.0, use_cache=True, id_range=(4, 34))
  np.testing.assert_array_equal(out[:, -4:] - token_data.NUM_RESERVED, short[:, 3])
  with pytest.raises(ValueError, match='context_frames'):
    sampling.generate_frames(cfg, params, prompt, 1, context_frames=4, **kw)
