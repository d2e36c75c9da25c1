"""Config variants: parameter counts against the thesis, and the benchmark command's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import toto
from launch import params as params_cmd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_paper_variant_within_ten_percent_of_the_thesis():
  rows = {r['variant']: r for r in params_cmd.variant_rows()}
  assert set(rows) == set(toto.VARIANTS)
  for name, row in rows.items():
    if row['paper'] is None:
      continue
    assert abs(row['rel_diff']) < 0.10, (name, row)
  # Table 4.1 ordering and the a-series growth are preserved.
  assert rows['base']['total'] < rows['large']['total'] < rows['1b']['total']
  sizes = [rows[f'a{i}']['non_embedding'] for i in range(1, 7)]
  assert sizes == sorted(sizes)


@pytest.mark.parametrize('variant', ['base', 'large', '1b', 'a3'])
def test_paper_shapes(variant):
  dim, heads, layers, *_ = toto.VARIANTS[variant]
  m = toto.get_config(variant).model
  assert (m.dim, m.num_heads, m.num_layers) == (dim, heads, layers)
  assert m.mlp_dim % 256 == 0
  assert m.vocab_size == 8192 + 4 and m.max_len >= 16 * 256 + 1


def test_gpt2_variant_and_unknown_variant():
  m = toto.get_config('base,gpt2').model
  assert m.arch == 'gpt2' and m.mlp_dim == 4 * m.dim
  with pytest.raises(ValueError, match='unknown variant'):
    toto.get_config('huge')


def test_full_config_mixture_is_table_4_2():
  sources = toto.get_config('base').data.sources
  weights = {k: v.weight for k, v in sources.items()}
  assert weights == {'imagenet': 0.2, 'ego4d': 0.1, 'kinetics': 0.1, 'howto100m': 0.6}
  assert sources.imagenet.kind == 'image'


def test_bench_prints_one_json_line_with_the_documented_fields():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  cmd = [sys.executable, '-m', 'launch.bench', 'toto', '--config', 'configs/toto.py:tiny',
         '--config.model.dim=32', '--config.model.num_layers=1', '--config.model.mlp_dim=64',
         '--seq_len', '32', '--batch', '2', '--steps', '2', '--warmup', '1']
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = [l for l in out.stdout.splitlines() if l.startswith('{')]
  assert len(lines) == 1
  r = json.loads(lines[0])
  for key in ('step_time_s_median', 'tokens_per_s', 'model_flops_per_token',
              'achieved_flops_per_s', 'peak_flops_per_s', 'peak_source', 'mfu'):
    assert key in r
  assert r['seq_len'] == 32 and r['batch'] == 2
  assert 0 < r['mfu'] < 1.5 and r['tokens_per_s'] > 0
  # On CPU the matmul rate is also measured beside each timed step, and MFU against the best of
  # every peak measured is the conservative figure.
  assert len(r['peak_flops_per_s_beside_steps']) == len(r['step_time_s_all']) == 2
  assert r['best_peak_flops_per_s'] >= max(r['peak_flops_per_s_beside_steps'] + [r['peak_flops_per_s']])
  assert r['mfu_vs_best_peak'] <= min(r['mfu'], r['mfu_beside_steps']) + 1e-9


def test_toto_breakdown_splits_the_step_and_restores_the_attention():
  from configs import toto
  from launch import bench
  from toto_jax import attention
  config = toto.get_config('tiny')
  config.model.dim, config.model.num_layers, config.model.mlp_dim = 32, 1, 64
  config.model.num_kv_heads = 1  # grouped heads: the stand-in repeats the value heads
  real = attention.dot_product_attention
  r = bench.bench_toto_breakdown(config, 32, 2, steps=1, warmup=1)
  assert attention.dot_product_attention is real
  for key in ('forward_s', 'forward_backward_s', 'optimizer_s',
              'forward_backward_without_attention_s', 'projection_matmuls_s'):
    assert r[key] > 0, key
  assert r['attention_s'] == pytest.approx(
      r['forward_backward_s'] - r['forward_backward_without_attention_s'])
  assert r['other_s'] == pytest.approx(
      r['forward_backward_without_attention_s'] - r['projection_matmuls_s'])
  assert r['seq_len'] == 32 and r['batch'] == 2 and r['peak_flops_per_s'] > 0
  q = np.zeros((1, 4, 4, 8), np.float32)
  v = np.arange(2 * 4 * 8, dtype=np.float32).reshape(1, 4, 2, 8)
  out = np.asarray(bench._without_attention(q, v, v))  # pylint: disable=protected-access
  np.testing.assert_array_equal(out[:, :, 0], v[:, :, 0])
  np.testing.assert_array_equal(out[:, :, 1], v[:, :, 0])
  np.testing.assert_array_equal(out[:, :, 2], v[:, :, 1])
