"""Scaling: MAC accounting, power-law fits, the lr sweep (resumable) and the fit CLI's pieces."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from launch import scaling as scaling_cli
from launch import sweep as sweep_lib
from toto_jax import scaling
from toto_jax.model import padded_vocab_size


def test_training_macs_matches_a_hand_count(small_toto_config):
  config = small_toto_config()
  m = config.model  # dim 32, 2 layers, 4 heads, SwiGLU mlp 64, vocab 64 (128 rows), causal
  d, layers, mlp, vocab = m.dim, m.num_layers, m.mlp_dim, padded_vocab_size(m.vocab_size)
  assert (d, layers, mlp, vocab) == (32, 2, 64, 128)
  length = 32
  # Forward MACs per token: q, k, v, out (4 d^2) + gate, up, down (3 d mlp) per layer, the head
  # (d x vocab), the two RMSNorm gains per layer and the final one (counted as matmul parameters
  # by param_counts, 1 MAC each), and causal attention: on average length/2 keys, d MACs for
  # the scores and d for the mixing, per layer.
  weights = layers * (4 * d * d + 3 * d * mlp + 2 * d) + d + d * vocab
  forward = weights + layers * (length / 2) * 2 * d
  assert scaling.train_macs_per_token(m, length) == pytest.approx(3 * forward)
  assert scaling.training_macs(m, 1000, length) == pytest.approx(1000 * 3 * forward)
  # One run: steps x global batch x tokens per sequence (frames x h x w + start and end
  # markers, less the one the model never reads).
  tokens, seq = scaling.run_tokens(config, 5)
  assert seq == 2 * 4 * 4 + 1 and tokens == 5 * 8 * seq
  forward_seq = weights + layers * (seq / 2) * 2 * d
  assert scaling.run_compute(config, 5) == pytest.approx(tokens * 3 * forward_seq)
  # MACs are half the trainer's FLOPs (launch/flops.py via TotoTask.train_flops_per_example).
  from toto_jax.task import TotoTask
  assert 2 * scaling.train_macs_per_token(m, seq) * seq == pytest.approx(
      TotoTask(config).train_flops_per_example())


def test_fit_recovers_a_known_power_law():
  rng = np.random.default_rng(0)
  c = np.geomspace(1e15, 1e21, 25)
  a, b = 7.32, 0.0378
  exact = a * c ** -b
  np.testing.assert_allclose(scaling.fit_power_law(c, exact), (a, b), rtol=1e-9)
  noisy = exact * np.exp(rng.normal(0.0, 0.005, c.shape))  # 0.5% multiplicative noise
  fa, fb = scaling.fit_power_law(c, noisy)
  assert fb == pytest.approx(b, abs=0.002)
  assert fa == pytest.approx(a, rel=0.1)
  # A different law is told apart: the fit is not returning constants.
  ga, gb = scaling.fit_power_law(c, 2.57 * c ** -0.048 * np.exp(rng.normal(0, 0.005, c.shape)))
  assert gb == pytest.approx(0.048, abs=0.002) and ga == pytest.approx(2.57, rel=0.1)


def test_fit_with_irreducible_loss():
  c = np.geomspace(1e9, 1e15, 30)
  loss = 1.5 + 40.0 * c ** -0.2
  noisy = loss * np.exp(np.random.default_rng(1).normal(0.0, 1e-4, c.shape))
  a, b, e = scaling.fit_power_law_offset(c, noisy)
  assert e == pytest.approx(1.5, abs=0.05)
  assert b == pytest.approx(0.2, abs=0.02)
  assert a == pytest.approx(40.0, rel=0.3)
  # Without an irreducible term the fit finds e = 0.
  pure = 5.0 * c ** -0.05
  a0, b0, e0 = scaling.fit_power_law_offset(c, pure)
  assert e0 == pytest.approx(0.0, abs=1e-3) and b0 == pytest.approx(0.05, abs=1e-3)


def test_fit_rejects_bad_points():
  with pytest.raises(ValueError, match='at least 2'):
    scaling.fit_power_law([1e10], [3.0])
  with pytest.raises(ValueError, match='positive'):
    scaling.fit_power_law([1e10, 1e11], [3.0, -1.0])
  # Non-finite points (diverged runs) are dropped, not fitted.
  a, b = scaling.fit_power_law([1e10, 1e11, 1e12], [2.0, 2.0 * 10 ** -0.1, np.nan])
  assert b == pytest.approx(0.1)


def test_frontier_is_the_lower_envelope():
  c, l = scaling.frontier([1, 2, 3, 4, 2, 3, 5], [5.0, 4.0, 4.5, 3.0, 3.5, 3.2, 3.1])
  np.testing.assert_array_equal(c, [1, 2, 3, 4])
  np.testing.assert_array_equal(l, [5.0, 3.5, 3.2, 3.0])


def test_parse_lrs():
  assert sweep_lib.parse_lrs('2^-9,...,2^-5') == [2.0 ** e for e in range(-9, -4)]
  assert sweep_lib.parse_lrs('3e-4, 2^-7') == [3e-4, 2 ** -7]
  assert sweep_lib.lr_label(2 ** -7) == '2^-7' and sweep_lib.lr_label(3e-4) == '0.0003'
  with pytest.raises(ValueError, match='--lrs'):
    sweep_lib.parse_lrs('1e-3,...,2^-5')
  with pytest.raises(ValueError, match='--widths'):
    sweep_lib.parse_widths('64,wide')


def test_fit_sweep_on_synthetic_points(tmp_path):
  """launch.scaling over a sweep.json whose best runs follow a known law recovers it and draws."""
  a, b = 9.0, 0.05
  runs = []
  for w, macs in ((32, 1e11), (64, 4e11), (128, 1.6e12), (256, 6.4e12)):
    for lr, penalty in ((2 ** -8, 0.3), (2 ** -6, 0.0), (2 ** -4, float('nan'))):
      loss = a * macs ** -b + penalty
      runs.append({'width': w, 'lr': lr, 'lr_label': sweep_lib.lr_label(lr), 'steps': 10,
                   'status': 'done' if np.isfinite(loss) else 'diverged', 'eval_loss': loss,
                   'train_loss': loss, 'macs': macs,
                   'curve': [[s, macs * s / 10, a * (macs * s / 10) ** -b] for s in (5, 10)]})
  fit = scaling_cli.fit_sweep({'runs': runs, 'parameterisation': 'mup'})
  assert fit['a'] == pytest.approx(a, rel=1e-6) and fit['b'] == pytest.approx(b, rel=1e-6)
  assert [p['lr'] for p in fit['points']] == [2 ** -6] * 4
  frontier = scaling_cli.fit_sweep({'runs': runs}, mode='frontier', min_fraction=0.5)
  assert frontier['b'] == pytest.approx(b, rel=1e-6)
  path = str(tmp_path / 'scaling.png')
  scaling.plot_power_law(fit['points'], fit, path, curves=fit['curves'])
  assert os.path.getsize(path) > 10_000


def test_sweep_end_to_end_and_resume(small_toto_config, tmp_path, monkeypatch, eight_devices):
  """Two widths under muP train for real, sweep.json and sweep.png appear, and a second call
  reuses the finished runs without training."""
  config = small_toto_config(train__global_batch_size=4, train__microbatch_size=4)
  workdir = str(tmp_path / 'sweep')
  summary = sweep_lib.sweep(config, [16, 32], [2 ** -6], 2, workdir, use_mup=True,
                            progress=False, devices=eight_devices[:1])
  assert summary['parameterisation'] == 'mup' and summary['base_width'] == 16
  assert sorted(r['width'] for r in summary['runs']) == [16, 32]
  for r in summary['runs']:
    assert r['status'] == 'done' and np.isfinite(r['eval_loss']) and np.isfinite(r['train_loss'])
    assert r['macs'] == pytest.approx(scaling.run_compute(
        sweep_lib.run_config(config, r['width'], r['lr'], 2, use_mup=True, base_width=16)))
    assert r['curve'][-1][0] == 2
  assert summary['runs'][1]['macs'] > summary['runs'][0]['macs']
  with open(os.path.join(workdir, 'sweep.json')) as f:
    assert json.load(f)['best'].keys() == {'16', '32'}
  assert os.path.getsize(os.path.join(workdir, 'sweep.png')) > 10_000
  with open(os.path.join(workdir, 'mup', 'w32_lr2p-6', 'config.json')) as f:
    model = json.load(f)['model']  # the run trained the muP model at its width
  assert (model['mup'], model['mup_base_width'], model['dim'], model['mlp_dim']) == (
      True, 16, 32, 64)

  def no_training(*args, **kwargs):
    raise AssertionError('a finished run was trained again')
  monkeypatch.setattr(sweep_lib, 'run_one', no_training)
  again = sweep_lib.sweep(config, [16, 32], [2 ** -6], 2, workdir, use_mup=True, progress=False)
  assert [r['eval_loss'] for r in again['runs']] == [r['eval_loss'] for r in summary['runs']]
  with pytest.raises(ValueError, match='--steps'):
    sweep_lib.sweep(config, [16], [2 ** -6], 3, workdir, use_mup=True, progress=False)
  print(sweep_lib.format_table(again))
