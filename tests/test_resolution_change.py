"""Resolution change (Table 4.4): a small run at 4x4 tokens continued at 8x8 with RoPE base 50,000
loads every parameter, trains, and starts below a fresh model at the new resolution."""

from __future__ import annotations

import contextlib
import io
import math

import jax
import numpy as np
import pytest

from configs import toto_highres
from launch import checkpoint as ckpt_lib
from launch import train as train_lib


def test_highres_config_doubles_the_grid_and_keeps_the_context():
  low = toto_highres.toto.get_config('base')
  high = toto_highres.get_config('base')
  assert (high.data.frame_h, high.data.frame_w) == (32, 32)
  assert high.model.rope_base == 50_000.0 and low.model.rope_base == 10_000.0
  assert high.model.max_len == high.data.frames * 32 * 32 + 1 == low.model.max_len
  tiny = toto_highres.get_config('tiny')
  assert (tiny.data.frames, tiny.data.frame_h) == (2, 12) and tiny.model.max_len == 289
  assert tiny.train.init_from == ''


def _first_loss(helpers, workdir) -> float:
  losses = helpers.train_losses(workdir)
  return losses[min(losses)]


def test_continue_at_double_resolution_from_a_low_resolution_run(helpers, small_toto_config,
                                                                 eight_devices, tmp_path):
  devices = eight_devices[:2]
  low = small_toto_config({'train.total_steps': 40, 'train.warmup_steps': 4, 'train.lr': 1e-2,
                           'checkpoint.every_steps': 40})
  low_dir = str(tmp_path / 'low')
  train_lib.train(low, low_dir, devices=devices)

  def high_config(init_from: str):
    config = toto_highres.raise_resolution(small_toto_config(
        {'train.total_steps': 6, 'train.warmup_steps': 2, 'train.lr': 3e-3,
         'checkpoint.every_steps': 6}))
    config.train.init_from = init_from
    return config

  high = high_config(low_dir)
  assert (high.data.frame_h, high.data.frames, high.model.max_len) == (8, 1, 65)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    summary = train_lib.train(high, str(tmp_path / 'high'), devices=devices)
  text = out.getvalue()
  loaded = ckpt_lib.load(low_dir)['params']
  n_arrays = len(jax.tree_util.tree_leaves(loaded))
  assert f'initialised {n_arrays} parameter arrays from {low_dir}' in text, text[-2000:]
  assert 'fresh: none' in text and 'not used: none' in text
  assert summary['step'] == 6
  # The same architecture: every array has the shape it had at low resolution.
  assert jax.tree_util.tree_structure(summary['final_params']) == jax.tree_util.tree_structure(
      loaded)
  train_lib.train(high_config(''), str(tmp_path / 'scratch'), devices=devices)
  continued = _first_loss(helpers, tmp_path / 'high')
  scratch = _first_loss(helpers, tmp_path / 'scratch')
  assert math.isfinite(continued)
  assert scratch == pytest.approx(math.log(64), abs=0.3)
  assert continued < scratch - 0.1, (continued, scratch)  # fresh: ln(64); observed ~3.98 vs 4.18
  assert np.isfinite(summary['metrics']['train/loss'])
