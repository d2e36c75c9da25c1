"""One face for every discrete tokenizer: uint8 frames in, int32 codes out, and back.

The tokenization job, the pictures and the demo only see :class:`Tokenizer`; the constructors
below wrap the trainable VQ-VAE, the DALL-E dVAE and the VQGAN. ``encode``/``decode`` take any
number of frames, run them in fixed-size batches (one compilation) spread over the local devices,
and return NumPy arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclasses.dataclass
class Tokenizer:
  """A frame tokenizer: ``encode(uint8 [N, R, R, 3]) -> int32 [N, R/f, R/f]`` and back."""
  name: str
  codebook_size: int
  downsample: int
  resolution: int
  encode_fn: Callable[[Any], Any]     # jitted, uint8 [B, R, R, 3] -> int32 [B, h, w]
  decode_fn: Callable[[Any], Any]     # jitted, int32 [B, h, w] -> uint8 [B, R, R, 3]
  batch_size: int = 64

  @property
  def grid(self) -> int:
    return self.resolution // self.downsample

  def _sharding(self) -> NamedSharding:
    devices = jax.local_devices()
    return NamedSharding(Mesh(np.array(devices), ('data',)), PartitionSpec('data'))

  def _batched(self, fn: Callable, x: np.ndarray, out_shape: tuple, out_dtype) -> np.ndarray:
    n = x.shape[0]
    devices = len(jax.local_devices())
    bs = max(devices, -(-self.batch_size // devices) * devices)
    out = np.empty((n,) + out_shape, out_dtype)
    sharding = self._sharding()
    for start in range(0, n, bs):
      chunk = x[start:start + bs]
      pad = bs - chunk.shape[0]
      if pad:  # one shape for every call: one compilation
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
      result = np.asarray(fn(jax.device_put(chunk, sharding)))
      out[start:start + bs - pad] = result[:bs - pad]
    return out

  def encode(self, frames_uint8: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames_uint8)
    r = self.resolution
    if frames.ndim != 4 or frames.shape[1:] != (r, r, 3) or frames.dtype != np.uint8:
      raise ValueError(f'{self.name}.encode: expected uint8 frames [N, {r}, {r}, 3], got '
                       f'{frames.dtype} {frames.shape}')
    return self._batched(self.encode_fn, frames, (self.grid, self.grid), np.int32)

  def decode(self, codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    g = self.grid
    if codes.ndim != 3 or codes.shape[1:] != (g, g):
      raise ValueError(f'{self.name}.decode: expected codes [N, {g}, {g}], got {codes.shape}')
    if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
      raise ValueError(f'{self.name}.decode: codes must lie in [0, {self.codebook_size}), got '
                       f'[{codes.min()}, {codes.max()}]')
    r = self.resolution
    return self._batched(self.decode_fn, codes.astype(np.int32), (r, r, 3), np.uint8)


def from_vq(vq_config, params: Any, model_state: dict, resolution: int,
            name: str = 'vq') -> Tokenizer:
  """The trainable VQ-VAE of :mod:`tokenizers_jax.vq` from its params and codebook state."""
  from tokenizers_jax import vq
  encode, decode = vq._jitted(vq_config)  # pylint: disable=protected-access
  params = jax.device_put(params)
  codebook = jax.device_put(np.asarray(model_state['codebook']))
  return Tokenizer(name=name, codebook_size=vq_config.codebook_size,
                   downsample=vq_config.downsample, resolution=resolution,
                   encode_fn=lambda x: encode(params, codebook, x),
                   decode_fn=lambda c: decode(params, codebook, c))


def _pair(weights: str, names: tuple[str, str]) -> tuple[str, str]:
  """``'A,B'``, a folder holding ``{names[0]}.*`` and ``{names[1]}.*``, or one file for both."""
  import glob
  import os
  if ',' in weights:
    first, second = (w.strip() for w in weights.split(',', 1))
    return first, second
  if os.path.isdir(weights):
    found = []
    for name in names:
      matches = sorted(glob.glob(os.path.join(weights, f'{name}.*')))
      if not matches:
        raise FileNotFoundError(f'tokenizer.weights: {weights!r} holds no {name}.npz (or .pt/.pkl)')
      found.append(matches[0])
    return found[0], found[1]
  return weights, weights


def from_dvae(weights: str, resolution: int = 128) -> Tokenizer:
  """The DALL-E dVAE from converted weights: ``'encoder.npz,decoder.npz'``, a folder holding
  ``encoder.npz`` and ``decoder.npz``, or one file with ``encoder.``/``decoder.`` key prefixes."""
  from tokenizers_jax import dvae
  enc_path, dec_path = _pair(weights, ('encoder', 'decoder'))
  model = dvae.DVAE.load(enc_path, dec_path)
  if resolution % model.encoder.downsample:
    raise ValueError(f'data.resolution ({resolution}) must be a multiple of the dVAE stride '
                     f'{model.encoder.downsample}')
  return Tokenizer(name='dvae', codebook_size=model.encoder.vocab_size,
                   downsample=model.encoder.downsample, resolution=resolution,
                   encode_fn=model.encode, decode_fn=model.decode, batch_size=32)


def from_vqgan(weights: str, codebook_size: int = 1024, resolution: int = 256) -> Tokenizer:
  """The taming-transformers VQGAN f16 (1024 or 16384 codes) from a converted ``.npz`` or a
  torch checkpoint (see :mod:`tokenizers_jax.vqgan`)."""
  from tokenizers_jax import vqgan
  presets = {1024: vqgan.VQGAN_1K, 16384: vqgan.VQGAN_16K}
  if codebook_size not in presets:
    raise ValueError(f'model.codebook_size must be 1024 or 16384 for the VQGAN, got '
                     f'{codebook_size}')
  config = presets[codebook_size]
  params = jax.device_put(vqgan.params_from_torch(weights, config))
  if resolution % config.downsample_factor:
    raise ValueError(f'data.resolution ({resolution}) must be a multiple of the VQGAN stride '
                     f'{config.downsample_factor}')
  return Tokenizer(name=f'vqgan_{codebook_size}', codebook_size=codebook_size,
                   downsample=config.downsample_factor, resolution=resolution,
                   encode_fn=lambda x: vqgan.encode(params, x, config),
                   decode_fn=lambda c: vqgan.decode(params, c, config), batch_size=16)
