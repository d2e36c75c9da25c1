r"""Toto resolution change: continue a 16x16-token run at 32x32 tokens with RoPE base 50,000.

Seed 000, Table 4.4: pre-training at 16x16 tokens per frame and then training on at 32x32 with
the RoPE base raised from 10,000 to 50,000 beats training at 32x32 from scratch. The frame grid
doubles on each side; the context length is kept (a quarter as many frames), so ``max_len`` is
unchanged for ``base`` (4 frames x 1024 tokens + start = 4097). RoPE has no parameters and the
embedding / head shapes do not depend on the grid, so *every* parameter of the low-resolution run
is loaded (``[train] initialised N parameter arrays ... fresh: none``); the optimizer starts fresh
with a short warm-up and a lower peak learning rate, as continued training.

Run (CPU, the built-in synthetic token clips; the tiny low-resolution run first)::

  python -m launch.train --config configs/toto.py:tiny --workdir runs/toto_tiny
  python -m launch.train --config configs/toto_highres.py:tiny --workdir runs/toto_tiny_12x12 \
      --config.train.init_from=runs/toto_tiny

``tiny`` goes from 8 frames of 6x6 to 2 frames of 12x12 (289 tokens either way); ``base`` /
``large`` / ``1b`` from 16 frames of 16x16 to 4 frames of 32x32. ``train.init_from`` is required
(an empty value trains from scratch at the new resolution: the comparison run of Table 4.4).
"""

from __future__ import annotations

import ml_collections

from configs import toto

HIGHRES_ROPE_BASE = 50_000.0


def raise_resolution(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` (a Toto pre-training config, changed in place) at twice the token grid per side,
  the same context length, RoPE base 50,000 and ``train.init_from`` fields; returns it."""
  d, m, t = config.data, config.model, config.train
  old_tokens = d.frames * d.frame_h * d.frame_w
  d.frame_h, d.frame_w = 2 * d.frame_h, 2 * d.frame_w
  d.frames = max(1, old_tokens // (d.frame_h * d.frame_w))  # keep the context length
  m.max_len = d.frames * d.frame_h * d.frame_w + 1
  m.rope_base = HIGHRES_ROPE_BASE
  t.init_from = ''              # the low-resolution run (--config.train.init_from=WORKDIR)
  t.init_from_step = -1         # -1: its newest checkpoint
  t.init_from_prefix = ''       # the whole tree transfers (same model, RoPE has no parameters)
  return config


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  config = raise_resolution(toto.get_config(arg))
  t = config.train
  if config.variant == 'tiny':
    t.total_steps = 100
    t.warmup_steps = 10
    t.lr = 3e-3
  else:
    t.total_steps = 50_000
    t.warmup_steps = 500
    t.lr = 1e-4
  return config
