"""A small trainable VQ-VAE tokenizer, so the whole pipeline runs where no released weights exist.

Convolutional encoder (total stride ``2**len(channels)``) -> vector quantiser -> convolutional
decoder, trained by the project's trainer (``configs/tokenizer.py``) on frames of videos or images.

* **Codebook**: updated by exponential moving averages of the encoder outputs assigned to each code
  (VQ-VAE-2 style), not by gradients. Its statistics are non-trainable *model state*
  (``{'codebook', 'cluster_size', 'embed_sum'}``) that the trainer threads through the step and
  checkpoints with the parameters.
* **Encoder gradients**: straight-through estimator (``z + stop_gradient(z_q - z)``) plus the
  commitment loss ``beta * |z - sg(z_q)|^2``.
* **Dead-code restarts**: a code whose EMA cluster size falls below ``restart_threshold`` is moved
  onto a random encoder output of the current batch, so the whole codebook stays in use.

The quantiser is written as small pure functions (:func:`quantize`, :func:`ema_update`,
:func:`restart_dead_codes`), each testable alone. Pixels are in [-1, 1] inside the model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VQConfig:
  """Architecture of the VQ-VAE. ``channels[i]`` is the width at stride ``2**i``."""
  channels: Sequence[int] = (64, 128, 128)
  res_blocks: int = 1           # residual blocks at every stride
  mid_blocks: int = 1           # residual blocks at the coarsest stride
  embed_dim: int = 32
  codebook_size: int = 512
  groups: int = 8               # GroupNorm groups (must divide every width)

  @property
  def downsample(self) -> int:
    return 2 ** len(self.channels)

  @classmethod
  def from_config(cls, cfg: Any) -> VQConfig:
    """From the ``model`` block of a tokenizer run config (ConfigDict or dict)."""
    get = cfg.get if hasattr(cfg, 'get') else lambda k, d=None: getattr(cfg, k, d)
    return cls(channels=tuple(int(c) for c in get('channels')), res_blocks=int(get('res_blocks')),
               mid_blocks=int(get('mid_blocks', 1)), embed_dim=int(get('embed_dim')), codebook_size=int(get('codebook_size')),
               groups=int(get('groups', 8)))


# ------------------------------------------------------------------------------------------------
# Encoder / decoder
# ------------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
  width: int
  groups: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.swish(nn.GroupNorm(self.groups, name='norm1')(x))
    h = nn.Conv(self.width, (3, 3), name='conv1')(h)
    h = nn.swish(nn.GroupNorm(self.groups, name='norm2')(h))
    h = nn.Conv(self.width, (3, 3), name='conv2')(h)
    if x.shape[-1] != self.width:
      x = nn.Conv(self.width, (1, 1), name='shortcut')(x)
    return x + h


class Encoder(nn.Module):
  """Pixels ``[B, H, W, 3]`` in [-1, 1] -> continuous latents ``[B, H/f, W/f, embed_dim]``."""
  config: VQConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    h = nn.Conv(c.channels[0], (3, 3), name='stem')(x)
    for level, width in enumerate(c.channels):
      for i in range(c.res_blocks):
        h = ResBlock(width, c.groups, name=f'down{level}_res{i}')(h)
      h = nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                  name=f'down{level}')(h)
    for i in range(c.mid_blocks):
      h = ResBlock(c.channels[-1], c.groups, name=f'mid{i}')(h)
    h = nn.swish(nn.GroupNorm(c.groups, name='norm_out')(h))
    return nn.Conv(c.embed_dim, (1, 1), name='to_latent')(h)


class Decoder(nn.Module):
  """Latents ``[B, h, w, embed_dim]`` -> pixels ``[B, f*h, f*w, 3]`` (unbounded, ~[-1, 1])."""
  config: VQConfig

  @nn.compact
  def __call__(self, z: Array) -> Array:
    c = self.config
    h = nn.Conv(c.channels[-1], (3, 3), name='from_latent')(z)
    for i in range(c.mid_blocks):
      h = ResBlock(c.channels[-1], c.groups, name=f'mid{i}')(h)
    for level in reversed(range(len(c.channels))):
      width = c.channels[level]
      b, hh, ww, ch = h.shape
      h = jax.image.resize(h, (b, 2 * hh, 2 * ww, ch), 'nearest')
      h = nn.Conv(width, (3, 3), name=f'up{level}')(h)
      for i in range(c.res_blocks):
        h = ResBlock(width, c.groups, name=f'up{level}_res{i}')(h)
    h = nn.swish(nn.GroupNorm(c.groups, name='norm_out')(h))
    return nn.Conv(3, (3, 3), name='to_pixels')(h)


class VQVAE(nn.Module):
  """Holds the encoder and decoder parameters; the codebook is model state (see module doc)."""
  config: VQConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def encode(self, x: Array) -> Array:
    return self.encoder(x)

  def decode(self, z_q: Array) -> Array:
    return self.decoder(z_q)

  def __call__(self, x: Array) -> Array:  # used by init: touches both halves
    return self.decoder(self.encoder(x))


# ------------------------------------------------------------------------------------------------
# Quantiser: pure functions over the codebook state
# ------------------------------------------------------------------------------------------------

def init_codebook_state(rng: Array, codebook_size: int, embed_dim: int) -> dict[str, Array]:
  """Random codes with zero cluster sizes: the first training step restarts every code that its
  batch does not use onto an encoder output (a data-dependent initialisation)."""
  codebook = jax.random.normal(rng, (codebook_size, embed_dim), jnp.float32)
  return {'codebook': codebook, 'cluster_size': jnp.zeros((codebook_size,), jnp.float32),
          'embed_sum': jnp.zeros((codebook_size, embed_dim), jnp.float32)}


def quantize(z: Array, codebook: Array) -> tuple[Array, Array]:
  """Nearest code by squared L2 distance: ``(z_q, indices)`` with ``z_q = codebook[indices]``."""
  flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  distances = (jnp.sum(flat ** 2, axis=1, keepdims=True) - 2.0 * flat @ codebook.T
               + jnp.sum(codebook ** 2, axis=1)[None, :])
  indices = jnp.argmin(distances, axis=1)
  z_q = jnp.take(codebook, indices, axis=0)
  return z_q.reshape(z.shape), indices.reshape(z.shape[:-1]).astype(jnp.int32)


def ema_update(state: dict[str, Array], flat_z: Array, indices: Array, decay: float,
               eps: float = 1e-5) -> dict[str, Array]:
  """One EMA step of cluster sizes and sums; codes are their (Laplace-smoothed) cluster means."""
  k = state['codebook'].shape[0]
  onehot = jax.nn.one_hot(indices.reshape(-1), k, dtype=jnp.float32)
  counts = onehot.sum(0)
  sums = onehot.T @ flat_z.astype(jnp.float32)
  cluster_size = decay * state['cluster_size'] + (1 - decay) * counts
  embed_sum = decay * state['embed_sum'] + (1 - decay) * sums
  total = cluster_size.sum()
  smoothed = (cluster_size + eps) / (total + k * eps) * total
  return {'codebook': embed_sum / smoothed[:, None], 'cluster_size': cluster_size,
          'embed_sum': embed_sum}


def restart_dead_codes(state: dict[str, Array], flat_z: Array, rng: Array,
                       threshold: float) -> tuple[dict[str, Array], Array]:
  """Moves every code with EMA cluster size < ``threshold`` onto a random row of ``flat_z``.

  Returns the new state and the number of codes restarted. A restarted code starts with cluster
  size 1 (so it is not restarted again at once) and its sum set to the chosen encoder output.
  """
  k = state['codebook'].shape[0]
  dead = state['cluster_size'] < threshold
  picks = jax.random.randint(rng, (k,), 0, flat_z.shape[0])
  replacement = jnp.take(flat_z.astype(jnp.float32), picks, axis=0)
  codebook = jnp.where(dead[:, None], replacement, state['codebook'])
  cluster_size = jnp.where(dead, 1.0, state['cluster_size'])
  embed_sum = jnp.where(dead[:, None], replacement, state['embed_sum'])
  return ({'codebook': codebook, 'cluster_size': cluster_size, 'embed_sum': embed_sum},
          dead.sum().astype(jnp.float32))


def code_perplexity(indices: Array, codebook_size: int) -> Array:
  """exp(entropy) of the code histogram: the effective number of codes in use."""
  counts = jnp.bincount(indices.reshape(-1), length=codebook_size).astype(jnp.float32)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0)))


# ------------------------------------------------------------------------------------------------
# Pixels and inference
# ------------------------------------------------------------------------------------------------

def to_model_pixels(images_uint8: Array) -> Array:
  return images_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(pixels: Array) -> Array:
  return jnp.round(jnp.clip((pixels + 1.0) * 127.5, 0, 255)).astype(jnp.uint8)


def psnr(reference_uint8: np.ndarray, other_uint8: np.ndarray) -> np.ndarray:
  """Per-image PSNR in dB over [0, 255] pixels (``[..., H, W, C]`` -> ``[...]``)."""
  diff = reference_uint8.astype(np.float64) - other_uint8.astype(np.float64)
  mse = np.mean(diff ** 2, axis=(-3, -2, -1))
  return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


@functools.lru_cache(maxsize=8)
def _jitted(config: VQConfig):
  model = VQVAE(config)

  @jax.jit
  def encode(params, codebook, images_uint8):
    z = model.apply({'params': params}, to_model_pixels(images_uint8), method=VQVAE.encode)
    return quantize(z, codebook)[1]

  @jax.jit
  def decode(params, codebook, codes):
    z_q = jnp.take(codebook, codes, axis=0)
    return to_uint8(model.apply({'params': params}, z_q, method=VQVAE.decode))
  return encode, decode


def encode(config: VQConfig, params: Any, model_state: dict, images_uint8: Any) -> np.ndarray:
  """uint8 RGB ``[B, H, W, 3]`` -> int32 codes ``[B, H/f, W/f]``."""
  return np.asarray(_jitted(config)[0](params, model_state['codebook'], jnp.asarray(images_uint8)))


def decode(config: VQConfig, params: Any, model_state: dict, codes: Any) -> np.ndarray:
  """int codes ``[B, h, w]`` -> uint8 RGB ``[B, f*h, f*w, 3]``."""
  return np.asarray(_jitted(config)[1](params, model_state['codebook'],
                                       jnp.asarray(codes, jnp.int32)))
