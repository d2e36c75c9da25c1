"""Patch tokens (Toto Table 4.3): patchify order, normalised targets, embedding, loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from tokenizers_jax import patch as patch_lib


def test_patchify_raster_order_and_inverse():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 8, 12, 3)).astype(np.float32)
  p = patch_lib.patchify(images, 4)
  assert p.shape == (2, 6, 48)
  # Patch 4 = grid row 1, col 1; inside a patch the order is (row, col, channel).
  np.testing.assert_array_equal(p[1, 4], images[1, 4:8, 4:8].reshape(-1))
  np.testing.assert_array_equal(patch_lib.unpatchify(p, 4, 8, 12), images)
  square = images[:, :, :8]
  np.testing.assert_array_equal(patch_lib.unpatchify(patch_lib.patchify(square, 4), 4), square)
  j = patch_lib.patchify(jnp.asarray(images), 4)
  np.testing.assert_array_equal(np.asarray(patch_lib.unpatchify(j, 4, 8, 12)), images)


def test_divisibility_errors():
  images = np.zeros((1, 8, 10, 3), np.float32)
  with pytest.raises(ValueError, match='8x10.*patch size 4'):
    patch_lib.patchify(images, 4)
  with pytest.raises(ValueError, match='8x10.*patch size 4'):
    patch_lib.normalized_patch_targets(images, 4)
  with pytest.raises(ValueError, match='8x10.*patch size 4'):
    patch_lib.PatchEmbed(dim=8, patch=4).init(jax.random.PRNGKey(0), images)
  with pytest.raises(ValueError, match='do not fill'):
    patch_lib.unpatchify(np.zeros((1, 6, 48)), 4, 8, 8)


def test_normalized_targets():
  rng = np.random.default_rng(1)
  images = rng.uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
  t = np.asarray(patch_lib.normalized_patch_targets(images, 4))
  assert t.shape == (2, 4, 48)
  np.testing.assert_allclose(t.mean(-1), 0.0, atol=1e-4)
  np.testing.assert_allclose(t.var(-1), 1.0, atol=1e-4)
  flat = np.zeros((1, 4, 4, 3), np.float32) + 7.0  # constant patch: finite zeros, no NaN
  np.testing.assert_array_equal(np.asarray(patch_lib.normalized_patch_targets(flat, 4)), 0.0)


def test_patch_embed_shapes_and_axes():
  images = jnp.ones((2, 8, 12, 3), jnp.float32)
  module = patch_lib.PatchEmbed(dim=16, patch=4)
  variables = module.init(jax.random.PRNGKey(0), images)
  boxed = variables['params']
  assert isinstance(boxed['kernel'], meta.Partitioned)
  assert boxed['kernel'].names == (None, 'embed') and boxed['bias'].names == ('embed',)
  params = meta.unbox(boxed)
  assert params['kernel'].shape == (48, 16) and params['bias'].shape == (16,)
  out = module.apply(variables, images)
  assert out.shape == (2, 6, 16)
  want = patch_lib.patchify(np.asarray(images), 4) @ np.asarray(params['kernel'])
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)


def test_patch_regression_loss():
  pred = jnp.zeros((1, 2, 4))
  target = jnp.array([[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]])
  assert float(patch_lib.patch_regression_loss(pred, target)) == pytest.approx(2.5)
  mask = jnp.array([[0.0, 1.0]])
  assert float(patch_lib.patch_regression_loss(pred, target, mask)) == pytest.approx(4.0)
  assert float(patch_lib.patch_regression_loss(pred, target, jnp.zeros((1, 2)))) == 0.0
  with pytest.raises(ValueError, match='target shape'):
    patch_lib.patch_regression_loss(pred, target[:, :1])
