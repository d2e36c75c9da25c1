"""Fine-tuning with a probe: stop-gradient into the backbone, layer-wise lr decay, a short run
from a pre-trained backbone, the labelled data pipeline and config errors."""

from __future__ import annotations

import contextlib
import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch import sharding as shard_lib
from launch import train as train_lib
from launch.sharding import ConfigError


def _finetune_config(helpers, overrides: dict | None = None):
  """``configs/toto_finetune.py:tiny,synthetic`` with the small test model's shape."""
  from configs import toto_finetune
  config = toto_finetune.get_config('tiny,synthetic')
  small = dict(helpers.small_overrides)
  small.update({'probe.layer': 1, 'eval.every_steps': 0})
  small.update(overrides or {})
  for key, value in small.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _task_params_batch(helpers, overrides=None):
  from launch import tasks as tasks_lib
  config = _finetune_config(helpers, overrides)
  task = tasks_lib.get_task(config)
  task.validate()
  params = shard_lib.unbox(task.init(jax.random.key(0)))
  batch = next(iter(task.train_data(seed=0, process_index=0, process_count=1, batch_size=8)))
  return config, task, params, {k: jnp.asarray(v) for k, v in batch.items()}


def test_labelled_batches_carry_the_synthetic_direction(helpers):
  from toto_jax import synthetic
  config, task, _, batch = _task_params_batch(helpers)
  assert batch['tokens'].shape == (8, 2 * 4 * 4 + 2) and batch['label'].shape == (8,)
  assert set(np.asarray(batch['label']).tolist()) <= set(range(synthetic.NUM_DIRECTIONS))
  evals = task.eval_data(process_index=0, process_count=1, batch_size=4, num_batches=2)
  assert len(evals) == 2 and evals[0]['label'].shape == (4,)
  # Held-out clips come after the training clips of the stream: their labels match make_clip's.
  d = config.data
  first = synthetic.make_clip(0, d.synthetic_clips, d.frames, d.frame_h, d.frame_w,
                              d.codebook_size)
  assert int(evals[0]['label'][0]) == first[1]


def test_probe_loss_never_reaches_the_backbone(helpers):
  _, task, params, batch = _task_params_batch(helpers)
  # Give the zero-initialised head weights, so the probe's own gradient is informative.
  params['probe']['head']['kernel'] = jax.random.normal(jax.random.key(1),
                                                        params['probe']['head']['kernel'].shape)
  probe_grads = jax.grad(lambda p: task.terms(p, batch)['probe_loss'])(params)
  for path, g in jax.tree_util.tree_leaves_with_path(probe_grads['backbone']):
    assert not np.any(np.asarray(g)), jax.tree_util.keystr(path)
  assert all(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(probe_grads['probe']))
  # The full loss still trains the backbone (next-token part) and the probe.
  full = jax.grad(lambda p: task.loss(p, batch, jax.random.key(0))[0])(params)
  assert np.any(np.asarray(full['backbone']['layers']['attn']['query']['kernel']))
  assert np.any(np.asarray(full['probe']['head']['kernel']))


def test_loss_is_mean_nll_plus_weighted_mean_cross_entropy(helpers):
  _, task, params, batch = _task_params_batch(helpers, {'probe.loss_weight': 0.5})
  total, aux = task.loss(params, batch, jax.random.key(0))
  t = task.terms(params, batch)
  n = batch['label'].shape[0]
  expected = t['nll'] / t['weight'] + 0.5 * t['probe_loss'] / n
  np.testing.assert_allclose(float(total / aux['weight']), float(expected), rtol=1e-6)
  # A zero-initialised head predicts uniformly: cross-entropy ln(num_classes).
  np.testing.assert_allclose(float(aux['probe_loss'] / aux['weight']), math.log(4), rtol=1e-5)


def test_lr_scales_follow_depth(helpers):
  config, task, params, _ = _task_params_batch(helpers, {'model.num_layers': 3})
  scales = task.lr_scales(params)
  layer_scale = np.asarray(scales['backbone']['layers']['attn']['query']['kernel'])
  np.testing.assert_allclose(layer_scale.ravel(), [0.9 ** 3, 0.9 ** 2, 0.9], rtol=1e-6)
  assert layer_scale.shape == (3, 1, 1, 1)
  np.testing.assert_allclose(float(scales['backbone']['embed']), 0.9 ** 4, rtol=1e-6)
  assert float(scales['backbone']['lm_head']['kernel']) == 1.0
  assert all(float(s) == 1.0 for s in jax.tree_util.tree_leaves(scales['probe']))
  # The trainer builds its optimizer from these scales.
  tx = train_lib.make_tx(task, config.train)
  assert tx.init(params) is not None
  # A muP backbone keeps its width multipliers (1 / width_mult on hidden matrices) under decay.
  dim = config.model.dim
  _, mup_task, mup_params, _ = _task_params_batch(
      helpers, {'model.num_layers': 3, 'model.mup': True, 'model.mup_base_width': dim // 2})
  mup_scales = mup_task.lr_scales(mup_params)
  np.testing.assert_allclose(
      np.asarray(mup_scales['backbone']['layers']['attn']['query']['kernel']).ravel(),
      [0.5 * 0.9 ** 3, 0.5 * 0.9 ** 2, 0.5 * 0.9], rtol=1e-6)
  np.testing.assert_allclose(float(mup_scales['backbone']['embed']), 0.9 ** 4, rtol=1e-6)
  assert float(mup_scales['backbone']['lm_head']['kernel']) == 1.0


def test_config_errors_name_the_field(helpers):
  from launch import tasks as tasks_lib
  for overrides, field in (({'probe.layer': 3}, 'probe.layer'),
                           ({'probe.num_classes': 1}, 'probe.num_classes'),
                           ({'train.layer_decay': 0.0}, 'train.layer_decay'),
                           ({'probe.heads': 3}, 'probe.heads')):
    task = tasks_lib.get_task(_finetune_config(helpers, overrides))
    with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
      task.validate()


def test_finetune_from_a_pretrained_run_loads_the_backbone_and_learns_the_probe(
    helpers, baseline_run, eight_devices, tmp_path):
  from launch import checkpoint as ckpt_lib
  from launch import metrics as metrics_lib
  from launch import tasks as tasks_lib
  from test_probe import _labelled_shards  # 3 classes visible in the clips' codes
  _labelled_shards(str(tmp_path / 'train-00000.array_record'), 160, 0)
  _labelled_shards(str(tmp_path / 'eval-00000.array_record'), 64, 1)
  config = _finetune_config(helpers, {
      'train.init_from': baseline_run.workdir, 'train.total_steps': 30,
      'train.warmup_steps': 3, 'train.lr': 1e-2, 'train.global_batch_size': 16,
      'train.microbatch_size': 16, 'checkpoint.every_steps': 30, 'log.every_steps': 1,
      'eval.every_steps': 30, 'eval.batches': 4, 'model.causal': False,
      'probe.num_classes': 3})
  config.data.sources = {'labelled': {
      'pattern': str(tmp_path / 'train-*.array_record'),
      'eval_pattern': str(tmp_path / 'eval-*.array_record'), 'weight': 1.0, 'kind': 'video'}}
  # Step 0: the backbone is exactly the pre-trained one, only the probe is fresh.
  task = tasks_lib.get_task(config)
  fresh = shard_lib.unbox(task.init(jax.random.key(0)))
  params, report = train_lib.init_from_pretrained(fresh, baseline_run.workdir,
                                                  prefix='backbone')
  assert report['unused'] == [] and all(k.startswith('probe/') for k in report['fresh'])
  helpers.assert_trees_equal(params['backbone'], ckpt_lib.load(baseline_run.workdir)['params'])

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    summary = train_lib.train(config, str(tmp_path / 'run'), devices=eight_devices[:2])
  assert f'initialised {report["copied"]} parameter arrays from {baseline_run.workdir}' in (
      out.getvalue())
  train = [r for r in metrics_lib.read_metrics(str(tmp_path / 'run')) if 'train/probe_loss' in r]
  first = np.mean([r['train/probe_loss'] for r in train[:2]])
  last = np.mean([r['train/probe_loss'] for r in train[-5:]])
  assert first == pytest.approx(math.log(3), abs=0.1)
  assert last < first - 0.2, (first, last)
  m = summary['metrics']
  assert m['eval/probe_accuracy'] > 0.6, m  # chance is 1/3
