"""Patch tokens (Toto, Table 4.3 "patch"): continuous patch inputs with normalised-pixel targets.

Instead of discrete codes, an image is cut into non-overlapping ``patch x patch`` squares in raster
order; each flattened patch (order ``(row, col, channel)`` inside the patch, as in MAE) is linearly
projected to the model width (:class:`PatchEmbed`), and the model regresses the next patch's pixels
normalised by that patch's own mean and variance (:func:`normalized_patch_targets`, MAE's
``norm_pix_loss``) with a mean squared error (:func:`patch_regression_loss`).

The functions work on NumPy and JAX arrays alike (only ``reshape``/``transpose`` and reductions).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = Any  # np.ndarray or jax.Array


def _check_divisible(height: int, width: int, patch: int, where: str) -> None:
  if patch <= 0:
    raise ValueError(f'{where}: patch size must be positive, got {patch}')
  if height % patch or width % patch:
    raise ValueError(f'{where}: image size {height}x{width} (HxW) is not divisible by patch size '
                     f'{patch}')


def patchify(images: Array, patch: int) -> Array:
  """images [B,H,W,C] -> patches [B, (H/p)*(W/p), p*p*C], patches in raster order."""
  if images.ndim != 4:
    raise ValueError(f'patchify: images must be [B,H,W,C], got shape {images.shape}')
  b, h, w, c = images.shape
  _check_divisible(h, w, patch, 'patchify')
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Array, patch: int, height: int | None = None,
               width: int | None = None) -> Array:
  """Inverse of :func:`patchify`: [B, N, p*p*C] -> [B, H, W, C] (square grid when H/W omitted)."""
  if patches.ndim != 3:
    raise ValueError(f'unpatchify: patches must be [B,N,p*p*C], got shape {patches.shape}')
  b, n, d = patches.shape
  if d % (patch * patch):
    raise ValueError(f'unpatchify: patch dim {d} is not a multiple of patch*patch = {patch * patch}')
  c = d // (patch * patch)
  if height is None and width is None:
    side = int(round(n ** 0.5))
    if side * side != n:
      raise ValueError(f'unpatchify: {n} patches do not form a square grid; pass height and width')
    height = width = side * patch
  elif height is None or width is None:
    raise ValueError('unpatchify: pass both height and width, or neither')
  _check_divisible(height, width, patch, 'unpatchify')
  gh, gw = height // patch, width // patch
  if gh * gw != n:
    raise ValueError(f'unpatchify: {n} patches do not fill a {height}x{width} image of '
                     f'{gh}x{gw} patches of size {patch}')
  x = patches.reshape(b, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


def normalized_patch_targets(images: Array, patch: int, eps: float = 1e-6) -> jax.Array:
  """MAE-style targets [B, N, p*p*C]: each patch minus its mean, over sqrt(its variance + eps).

  Mean and variance are over the patch's own p*p*C values (population variance: MAE's torch
  ``var`` is the unbiased one, a factor (n-1)/n that is negligible for n = p*p*C)."""
  x = jnp.asarray(patchify(images, patch), jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.var(x, axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


class PatchEmbed(nn.Module):
  """images [B,H,W,C] -> [B, N, dim]: a linear projection of each flattened patch.

  Equivalent to a stride-``patch`` conv; params ``kernel`` [p*p*C, dim] (axes ``(None, 'embed')``)
  and ``bias`` [dim] (``('embed',)``), stored in float32, computed in ``dtype``."""
  dim: int
  patch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> jax.Array:
    x = patchify(jnp.asarray(images), self.patch)
    kernel = self.param('kernel', nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                               (None, 'embed')),
                        (x.shape[-1], self.dim), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      (self.dim,), jnp.float32)
    y = x.astype(self.dtype) @ kernel.astype(self.dtype)
    return y + bias.astype(self.dtype)


def patch_regression_loss(pred: Array, target: Array, mask: Array | None = None) -> jax.Array:
  """Mean squared error per patch (mean over the last axis), averaged over patches.

  ``mask`` [B, N] (1 = counted) restricts the average to some patches, as MAE does for the masked
  ones; an all-zero mask gives 0, not NaN."""
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  if pred.shape != target.shape:
    raise ValueError(f'patch_regression_loss: pred shape {pred.shape} != target shape '
                     f'{target.shape}')
  per_patch = jnp.mean((pred - target) ** 2, axis=-1)
  if mask is None:
    return jnp.mean(per_patch)
  mask = jnp.asarray(mask, jnp.float32)
  if mask.shape != per_patch.shape:
    raise ValueError(f'patch_regression_loss: mask shape {mask.shape} != patch grid '
                     f'{per_patch.shape}')
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)
