"""The trainable VQ tokenizer as a trainer task: frames of videos or images in, reconstruction out.

An example is ``data.frames_per_example`` frames of one video (or as many images), uint8
``[k, R, R, 3]``; the loss treats them as independent images. Unreadable files never stop a run:
the reader warns once per file and takes another one in its place.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Iterable, Mapping

import grain
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax import images as image_io
from tokenizers_jax import video as video_io
from tokenizers_jax import vq
from toto_jax import data as token_data

_log = logging.getLogger(__name__)
_MAX_SUBSTITUTIONS = 16


# ------------------------------------------------------------------------------------------------
# Frames from a folder of videos, a folder of images or a TFDS split
# ------------------------------------------------------------------------------------------------

class FrameReader:
  """Random-access examples ``uint8 [k, R, R, 3]`` over one input (``DIR`` or ``tfds:NAME/SPLIT``).

  Index ``i`` reads video ``i`` (``k`` frames, ``stride`` apart, from its start) or images
  ``i*k .. i*k+k-1``. A file that cannot be read is replaced by the next readable one, with one
  warning per file.
  """

  def __init__(self, spec: str, *, resolution: int, frames: int, stride: int, crop: str,
               tfds_data_dir: str | None = None, field: str = 'data.input'):
    self.resolution, self.frames, self.stride, self.crop = resolution, frames, stride, crop
    self.field = field
    self.bad: set[str] = set()
    parsed = image_io.parse_input_spec(spec)
    self.tfds = None
    self.videos: list[str] = []
    self.images: list[str] = []
    if parsed[0] == 'tfds':
      self.tfds = image_io.TfdsImages(parsed[1], parsed[2], resolution=resolution,
                                      data_dir=tfds_data_dir or None, crop=crop)
      count = len(self.tfds) // frames
    else:
      root = parsed[1]
      if not os.path.isdir(root):
        raise FileNotFoundError(f'{field}: input directory {root!r} does not exist')
      self.videos = video_io.list_videos(root)
      if not self.videos:
        self.images = image_io.list_images(root)
      count = len(self.videos) or len(self.images) // frames
    if count < 1:
      raise ValueError(f'{field}: {spec!r} holds no videos and fewer than {frames} images')
    self.count = count

  def __len__(self) -> int:
    return self.count

  def _read_one(self, i: int, rng: np.random.Generator | None) -> np.ndarray:
    if self.videos:
      return video_io.read_clip(self.videos[i], frames=self.frames, stride=self.stride,
                                resolution=self.resolution, crop=self.crop, rng=rng, short='pad')
    if self.tfds is not None:
      return np.stack([self.tfds[i * self.frames + j][0] for j in range(self.frames)])
    return np.stack([image_io.read_image(self.images[i * self.frames + j],
                                         resolution=self.resolution, crop=self.crop, rng=rng)
                     for j in range(self.frames)])

  def read(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
    for attempt in range(_MAX_SUBSTITUTIONS):
      j = (i + attempt) % self.count
      try:
        return self._read_one(j, rng)
      except video_io.InputError as e:
        if e.path not in self.bad:
          self.bad.add(e.path)
          _log.warning('%s: skipping unreadable input (%s)', self.field, e)
    raise RuntimeError(f'{self.field}: {_MAX_SUBSTITUTIONS} consecutive inputs from index {i} '
                       f'could not be read; see the warnings above')


class _ReadTrain(grain.transforms.RandomMap):
  def __init__(self, reader: FrameReader):
    self.reader = reader

  def random_map(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {'frames': self.reader.read(int(index), rng)}


class _ReadEval(grain.transforms.Map):
  def __init__(self, reader: FrameReader):
    self.reader = reader

  def map(self, index: int) -> dict[str, np.ndarray]:
    return {'frames': self.reader.read(int(index))}


def _reader(data_cfg, spec: str, field: str, crop: str) -> FrameReader:
  return FrameReader(spec, resolution=data_cfg.resolution, frames=data_cfg.frames_per_example,
                     stride=data_cfg.frame_stride, crop=crop,
                     tfds_data_dir=data_cfg.get('tfds_data_dir') or None, field=field)


def _batched(ds: grain.MapDataset, batch_size: int, workers: int) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=64))
  it = it.batch(batch_size, drop_remainder=True)
  if workers > 0:
    token_data.ensure_absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


# ------------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------------

class VQTokenizerTask:
  """Plugs :mod:`tokenizers_jax.vq` into ``launch.train`` (``config.task = 'vq_tokenizer'``)."""

  def __init__(self, config):
    self.config = config
    self.vq_config = vq.VQConfig.from_config(config.model)
    self.model = vq.VQVAE(self.vq_config)

  # --- configuration -------------------------------------------------------------------------
  def validate(self) -> None:
    from launch.sharding import ConfigError
    c, m, d = self.config, self.config.model, self.config.data
    if c.tokenizer.kind != 'vq':
      raise ConfigError(f"tokenizer.kind = {c.tokenizer.kind!r} has released weights and is not "
                        f"trained here; only 'vq' trains (use launch.tokenize for the others)")
    for w in m.channels:
      if w % m.groups:
        raise ConfigError(f'model.groups ({m.groups}) must divide every entry of model.channels '
                          f'{tuple(m.channels)}')
    f = self.vq_config.downsample
    if d.resolution % f:
      raise ConfigError(f'data.resolution ({d.resolution}) must be divisible by the tokenizer '
                        f'stride {f} (2 ** len(model.channels))')
    for name in ('frames_per_example', 'frame_stride', 'resolution'):
      if int(d[name]) < 1:
        raise ConfigError(f'data.{name} must be >= 1, got {d[name]}')
    if not 0.0 < m.ema_decay < 1.0:
      raise ConfigError(f'model.ema_decay must be in (0, 1), got {m.ema_decay}')
    if m.codebook_size < 2:
      raise ConfigError(f'model.codebook_size must be >= 2, got {m.codebook_size}')
    if not d.input:
      raise ConfigError('data.input is empty: give a folder of videos or images, or '
                        'tfds:NAME/SPLIT (--config.data.input=...)')
    for field, spec in (('data.input', d.input), ('data.eval_input', d.eval_input)):
      if spec and not spec.startswith('tfds:') and not os.path.isdir(spec):
        raise ConfigError(f'{field}: directory {spec!r} does not exist')

  # --- model -----------------------------------------------------------------------------------
  def init(self, rng: jax.Array) -> Any:
    r = self.config.data.resolution
    return self.model.init(rng, jnp.zeros((1, r, r, 3), jnp.float32))['params']

  def init_model_state(self, rng: jax.Array) -> dict[str, jax.Array]:
    m = self.config.model
    return vq.init_codebook_state(jax.random.fold_in(rng, 1), m.codebook_size, m.embed_dim)

  def loss(self, params, batch: Mapping[str, jax.Array], rng: jax.Array, model_state):
    m = self.config.model
    frames = batch['frames']
    images = frames.reshape((-1,) + frames.shape[2:])
    x = vq.to_model_pixels(images)
    z = self.model.apply({'params': params}, x, method=vq.VQVAE.encode)
    z_q, codes = vq.quantize(z, jax.lax.stop_gradient(model_state['codebook']))
    commitment = jnp.mean((z - jax.lax.stop_gradient(z_q)) ** 2, axis=(1, 2, 3))
    z_st = z + jax.lax.stop_gradient(z_q - z)  # straight-through estimator
    recon = self.model.apply({'params': params}, z_st, method=vq.VQVAE.decode)
    mse = jnp.mean((recon - x) ** 2, axis=(1, 2, 3))

    flat_z = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1])
    new_state = vq.ema_update(model_state, flat_z, codes, m.ema_decay)
    new_state, restarted = vq.restart_dead_codes(new_state, flat_z, rng, m.restart_threshold)
    n = jnp.float32(images.shape[0])
    used = (jnp.bincount(codes.reshape(-1), length=m.codebook_size) > 0).mean()
    aux = {
        'weight': n,
        'mse': mse.sum(),
        'commitment': commitment.sum(),
        'psnr': (10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))).sum(),  # pixels span 2.0
        'perplexity': vq.code_perplexity(codes, m.codebook_size) * n,
        'codes_used_in_batch': used * n,
        'restarted_codes': restarted * n,
        'model_state': new_state,
    }
    return (mse + m.commitment_beta * commitment).sum(), aux

  def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
    return {'frames': ('act_batch', None, None, None, None)}

  # --- data ------------------------------------------------------------------------------------
  def train_data(self, *, seed: int, process_index: int, process_count: int, batch_size: int):
    d = self.config.data
    reader = _reader(d, d.input, 'data.input', 'random')
    ds = grain.MapDataset.range(len(reader))
    ds = token_data.shard_for_process(ds, 'data.input', process_index, process_count, 1)
    ds = ds.shuffle(seed=token_data.derive_seed(seed, 0, 1)).repeat(None)
    ds = ds.random_map(_ReadTrain(reader), seed=token_data.derive_seed(seed, 0, 2))
    return _batched(ds, batch_size, int(d.get('worker_count', 0)))

  def eval_data(self, *, process_index: int, process_count: int, batch_size: int,
                num_batches: int) -> Iterable[Mapping[str, Any]]:
    d = self.config.data
    if not d.eval_input:
      return []
    reader = _reader(d, d.eval_input, 'data.eval_input', 'center')
    ds = grain.MapDataset.range(len(reader))
    ds = token_data.shard_for_process(ds, 'data.eval_input', process_index, process_count, 1)
    ds = ds.repeat(None, reseed_each_epoch=False).map(_ReadEval(reader))
    it = iter(_batched(ds, batch_size, workers=0))
    return [next(it) for _ in range(num_batches)]

  # --- accounting ------------------------------------------------------------------------------
  def tokens_per_example(self) -> int:
    """Codes produced per example (frames x h x w)."""
    h = self.config.data.resolution // self.vq_config.downsample
    return self.config.data.frames_per_example * h * h

  @functools.cache
  def train_flops_per_example(self) -> float:
    """XLA's FLOP count of one image's forward pass, x3 for forward + backward, x frames."""
    r = self.config.data.resolution
    params = jax.eval_shape(self.init, jax.random.key(0))
    fwd = jax.jit(lambda p, x: self.model.apply({'params': p}, x))
    cost = fwd.lower(params, jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32)).compile()
    analysis = cost.cost_analysis()
    if isinstance(analysis, list):
      analysis = analysis[0]
    flops = float(analysis.get('flops', 0.0)) if analysis else 0.0
    return 3.0 * flops * self.config.data.frames_per_example
