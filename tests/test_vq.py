"""The trainable VQ tokenizer: quantiser functions alone, then training through the trainer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizers_jax import vq


def test_quantize_picks_nearest_code():
  codebook = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
  z = jnp.array([[[[0.9, 0.1], [0.1, 1.6]], [[-0.2, 0.1], [5.0, 0.0]]]])  # [1, 2, 2, 2]
  z_q, idx = vq.quantize(z, codebook)
  np.testing.assert_array_equal(np.asarray(idx), [[[1, 2], [0, 1]]])
  np.testing.assert_allclose(np.asarray(z_q), np.asarray(codebook)[np.asarray(idx)])


def test_ema_update_moves_codes_to_cluster_means():
  state = {'codebook': jnp.zeros((2, 2)), 'cluster_size': jnp.ones(2), 'embed_sum': jnp.zeros((2, 2))}
  flat = jnp.array([[1.0, 1.0], [3.0, 3.0], [-2.0, 0.0]])
  idx = jnp.array([0, 0, 1])
  for _ in range(400):  # decay^400 ~ 0: the state forgets its initial values
    state = vq.ema_update(state, flat, idx, decay=0.98, eps=1e-9)
  np.testing.assert_allclose(np.asarray(state['codebook']), [[2.0, 2.0], [-2.0, 0.0]], atol=1e-3)
  np.testing.assert_allclose(np.asarray(state['cluster_size']), [2.0, 1.0], atol=1e-3)


def test_restart_moves_only_dead_codes_onto_encoder_outputs():
  state = {'codebook': jnp.array([[0.0, 0.0], [9.0, 9.0], [5.0, 5.0]]),
           'cluster_size': jnp.array([3.0, 0.01, 2.0]),
           'embed_sum': jnp.zeros((3, 2))}
  flat = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  new, restarted = vq.restart_dead_codes(state, flat, jax.random.key(0), threshold=0.5)
  assert float(restarted) == 1.0
  book = np.asarray(new['codebook'])
  np.testing.assert_array_equal(book[[0, 2]], [[0.0, 0.0], [5.0, 5.0]])
  assert any(np.array_equal(book[1], row) for row in np.asarray(flat))
  assert float(new['cluster_size'][1]) == 1.0


def test_perplexity_counts_effective_codes():
  assert float(vq.code_perplexity(jnp.array([0, 1, 2, 3]), 8)) == pytest.approx(4.0)
  assert float(vq.code_perplexity(jnp.array([5, 5, 5]), 8)) == pytest.approx(1.0)


def test_encoder_decoder_shapes_follow_the_stride():
  cfg = vq.VQConfig(channels=(8, 16), res_blocks=1, embed_dim=4, codebook_size=16, groups=4)
  model = vq.VQVAE(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  z = model.apply({'params': params}, jnp.zeros((2, 16, 16, 3)), method=vq.VQVAE.encode)
  assert z.shape == (2, 4, 4, 4)
  out = model.apply({'params': params}, z, method=vq.VQVAE.decode)
  assert out.shape == (2, 16, 16, 3)
  state = vq.init_codebook_state(jax.random.key(1), 16, 4)
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  codes = vq.encode(cfg, params, state, images)
  assert codes.shape == (3, 4, 4) and codes.dtype == np.int32
  assert vq.decode(cfg, params, state, codes).shape == (3, 16, 16, 3)


def test_psnr_of_identical_and_known_error():
  a = np.zeros((2, 4, 4, 3), np.uint8)
  b = a.copy()
  b[1] += 255 // 15  # a constant error of 17 -> 20 log10(255/17)
  scores = vq.psnr(a, b)
  assert scores[0] > 90
  assert scores[1] == pytest.approx(20 * np.log10(255 / 17), rel=1e-6)
