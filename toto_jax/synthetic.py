"""Synthetic token videos with real temporal structure, for CPU demos and tests of Toto.

Each clip lives on an ``h x w`` grid of codebook codes for ``frames`` frames:

* a static background: a small ``ph x pw`` tile of codes (2..4 per side) repeated over the grid,
  drawn from the lower half of the codebook ``[0, K/2)``;
* 1-3 rectangular objects, each a ``oh x ow`` patch of distinct codes from the upper half
  ``[K/2, K)``, moving with a constant integer velocity and wrapping around the edges (a torus), so
  every frame after the first is an exact function of the previous one. Objects are painted in a
  fixed depth order (object 0, the "main" object, is at the back; later ones occlude it).

The main object moves axis-aligned at 1-2 cells per frame; its direction is the clip's ``label``:
0 right (+x), 1 left (-x), 2 down (+y), 3 up (-y). Other objects move in any non-zero direction.
Everything is a deterministic function of ``(seed, index)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toto_jax import shards

NUM_DIRECTIONS = 4
_DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx) for labels 0..3
MIN_CODEBOOK = 4


def make_clip(seed: int, index: int, frames: int, h: int, w: int,
              codebook_size: int) -> tuple[np.ndarray, int]:
  """Renders clip ``index`` of the stream ``seed``: (uint16 codes [frames, h, w], label)."""
  rng = np.random.default_rng([int(seed), int(index)])
  half = codebook_size // 2
  # Background: a small random tile, repeated.
  ph, pw = int(rng.integers(2, 5)), int(rng.integers(2, 5))
  tile = rng.integers(0, half, size=(ph, pw))
  bg = np.tile(tile, (-(-h // ph), -(-w // pw)))[:h, :w]

  n_obj = int(rng.integers(1, 4))
  label = int(rng.integers(0, NUM_DIRECTIONS))
  objects = []
  for k in range(n_obj):
    oh = int(rng.integers(2, max(2, h // 3) + 1))
    ow = int(rng.integers(2, max(2, w // 3) + 1))
    oh, ow = min(oh, h), min(ow, w)
    n_codes = codebook_size - half
    patch = rng.choice(n_codes, size=oh * ow, replace=n_codes < oh * ow) + half
    y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    if k == 0:
      speed = int(rng.integers(1, 3))
      vy, vx = (d * speed for d in _DIRECTIONS[label])
    else:
      vy, vx = 0, 0
      while vy == 0 and vx == 0:
        vy, vx = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
    objects.append((patch.reshape(oh, ow), y0, x0, vy, vx))

  out = np.empty((frames, h, w), np.uint16)
  for t in range(frames):
    canvas = bg.copy()
    for patch, y0, x0, vy, vx in objects:  # depth order: later objects on top
      oh, ow = patch.shape
      rows = (y0 + vy * t + np.arange(oh)) % h
      cols = (x0 + vx * t + np.arange(ow)) % w
      canvas[np.ix_(rows, cols)] = patch
    out[t] = canvas
  return out, label


class SyntheticTokenClips:
  """Grain random-access source of synthetic clips (same dicts as :func:`shards.decode_record`).

  Item ``i`` is clip ``start_index + i`` of the stream ``seed``; disjoint index ranges give
  disjoint (independently drawn) clips, which is how the eval split is made.
  """

  def __init__(self, num_clips: int, frames: int, h: int, w: int, codebook_size: int,
               seed: int = 0, start_index: int = 0):
    for name, v, lo in (('num_clips', num_clips, 0), ('frames', frames, 1), ('h', h, 1),
                        ('w', w, 1), ('codebook_size', codebook_size, MIN_CODEBOOK),
                        ('seed', seed, 0), ('start_index', start_index, 0)):
      if not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f'SyntheticTokenClips.{name} must be an int >= {lo}, got {v!r}')
    if codebook_size > 0x10000:
      raise ValueError(f'SyntheticTokenClips.codebook_size must be <= 65536, got {codebook_size}')
    self.num_clips, self.frames, self.h, self.w = num_clips, frames, h, w
    self.codebook_size, self.seed, self.start_index = codebook_size, seed, start_index

  def __len__(self) -> int:
    return self.num_clips

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if i < 0:
      i += self.num_clips
    if not 0 <= i < self.num_clips:
      raise IndexError(f'clip index {i} out of range [0, {self.num_clips})')
    codes, label = make_clip(self.seed, self.start_index + i, self.frames, self.h, self.w,
                             self.codebook_size)
    return {'codes': codes, 'kind': 'video', 'source': 'synthetic', 'label': label}

  def __repr__(self) -> str:
    return (f'SyntheticTokenClips(num_clips={self.num_clips}, frames={self.frames}, h={self.h}, '
            f'w={self.w}, codebook_size={self.codebook_size}, seed={self.seed}, '
            f'start_index={self.start_index})')


def write_synthetic_shards(output_dir: str, num_clips: int, frames: int, h: int, w: int,
                           codebook_size: int, seed: int, records_per_shard: int,
                           prefix: str = 'synthetic') -> list[str]:
  """Writes ``num_clips`` synthetic clips as record shards via :class:`shards.ShardWriter`."""
  src = SyntheticTokenClips(num_clips, frames, h, w, codebook_size, seed)
  with shards.ShardWriter(output_dir, prefix, records_per_shard) as writer:
    for i in range(len(src)):
      r = src[i]
      writer.write(shards.encode_record(r['codes'], r['kind'], r['source'], r['label']))
  return writer.paths
