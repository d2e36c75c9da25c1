"""PHALP pose predictor: the model's invariances, the tracker's interface, data and training."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import phalp as phalp_configs
from launch import tasks as tasks_lib
from launch.sharding import ConfigError
from phalp_jax import pose, pose_task

DP, H = 6, 7


def _small_config(**model):
  config = phalp_configs.get_config('tiny')
  config.model.pose_dim = DP
  for k, v in model.items():
    config.model[k] = v
  return config


def _random_params(config, seed=0):
  """Every parameter random (the readout too), so the residual is far from zero."""
  params = nn.meta.unbox(pose.init_params(config, jax.random.key(seed), history=H))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _history(seed=0, n=H):
  rng = np.random.default_rng(seed)
  times = np.sort(rng.choice(40, n, replace=False)).astype(np.float32) + 100
  valid = rng.random(n) < 0.7
  valid[-2] = True
  poses = rng.normal(size=(n, DP)).astype(np.float32)
  return poses, times, valid


def test_untrained_model_is_the_last_observation():
  config = _small_config()
  predict = jax.jit(pose.make_pose_predictor(pose.init_params(config, jax.random.key(0)), config))
  for seed in range(3):
    poses, times, valid = _history(seed)
    perm = np.random.default_rng(seed).permutation(H)  # slot order does not matter
    t_last = times[valid].max()
    expected = poses[valid][np.argmax(times[valid])]
    for target in (t_last + 1, t_last + 12):
      out = predict(poses[perm], times[perm], valid[perm], target)
      np.testing.assert_allclose(out, expected, atol=1e-6)
      np.testing.assert_allclose(pose.last_observation(poses, times, valid, target), expected)
  assert pose.make_pose_predictor(None, config) is pose.last_observation
  assert pose.load_pose_predictor('') is pose.last_observation


def test_missing_entries_are_ignored():
  config = _small_config()
  predict = jax.jit(pose.make_pose_predictor(_random_params(config), config))
  poses, times, valid = _history(1)
  out = predict(poses, times, valid, times[valid].max() + 5)
  changed_p, changed_t = poses.copy(), times.copy()
  changed_p[~valid] = np.nan  # whatever an empty slot holds
  changed_t[~valid] = 1e6
  np.testing.assert_allclose(predict(changed_p, changed_t, valid, times[valid].max() + 5), out,
                             rtol=1e-5, atol=1e-6)
  # Dropping a valid entry changes it; shifting every time and the target together does not.
  other = valid.copy()
  other[np.nonzero(valid)[0][0]] = False
  assert np.abs(predict(poses, times, other, times[valid].max() + 5) - out).max() > 1e-4
  np.testing.assert_allclose(predict(poses, times + 1000, valid, times[valid].max() + 1005), out,
                             rtol=1e-4, atol=1e-4)


def test_horizon_is_encoded_and_clamped_at_max_horizon():
  config = _small_config()
  predict = jax.jit(pose.make_pose_predictor(_random_params(config), config))
  poses, times, valid = _history(2)
  t_last = times[valid].max()
  outs = [np.asarray(predict(poses, times, valid, t_last + h)) for h in (1, 6, 12, 30)]
  assert np.abs(outs[0] - outs[1]).max() > 1e-4 and np.abs(outs[1] - outs[2]).max() > 1e-4
  np.testing.assert_allclose(outs[3], outs[2], rtol=1e-5, atol=1e-6)  # beyond c = 12: clamped


def test_predictor_is_vmappable_and_jittable_with_the_trackers_signature():
  config = _small_config(num_heads=2, num_layers=2, norm='rms')
  predict = pose.make_pose_predictor(_random_params(config), config)
  hist = [_history(s) for s in range(4)]
  poses, times, valid = (np.stack(x) for x in zip(*hist))
  targets = jnp.asarray(times.max(-1) + 3)
  batched = jax.jit(jax.vmap(predict))(poses, times, valid, targets)
  assert batched.shape == (4, DP) and batched.dtype == jnp.float32
  for i in range(4):
    np.testing.assert_allclose(batched[i], predict(poses[i], times[i], valid[i], targets[i]),
                               rtol=1e-5, atol=1e-5)
  last = jax.jit(jax.vmap(pose.last_observation))(poses, times.astype(np.int32), valid, targets)
  assert last.shape == (4, DP)
  with pytest.raises(ValueError, match='model.pose_dim'):
    predict(np.zeros((H, DP + 1)), times[0], valid[0], 1.0)


def test_examples_from_npz_detection_files(tmp_path):
  from phalp_jax import synthetic
  for i in range(2):
    scene = synthetic.make_scene(synthetic.get_config('easy', num_frames=60, pose_dim=DP),
                                 seed=(3, i))
    synthetic.save_scene_npz(scene, str(tmp_path / f'{i:04d}.npz'))
  tracks = pose_task.npz_tracks(str(tmp_path), DP)
  assert len(tracks) == 2 * 3 and all(np.all(np.diff(f) > 0) for f in tracks.frames)
  targets = tracks.targets(12)
  rng = np.random.default_rng(0)
  for track, position in targets[rng.choice(len(targets), 50)]:
    ex = pose_task.make_example(tracks, int(track), int(position), rng, history=H,
                                max_horizon=12, drop_rate=0.5, truncate_rate=0.5)
    assert ex['pose_hist'].shape == (H, DP) and ex['valid'][-1]
    assert 1 <= ex['target_t'] - ex['times'][-1] <= 12
    assert np.all(np.diff(ex['times'][ex['valid']]) > 0)
    np.testing.assert_array_equal(ex['target'], tracks.poses[track][position])
  with pytest.raises(ValueError, match='model.pose_dim'):
    pose_task.npz_tracks(str(tmp_path), DP + 1)


def test_config_errors_name_the_field():
  for field, value, match in (('model.num_heads', 3, 'model.num_heads'),
                              ('data.drop_rate', 1.0, 'data.drop_rate'),
                              ('data.input', '/nonexistent/dir', 'data.input'),
                              ('data.synthetic.eval_seed', 0, 'data.synthetic.eval_seed')):
    config = phalp_configs.get_config('tiny')
    section, *rest = field.split('.')
    node = config[section]
    for k in rest[:-1]:
      node = node[k]
    node[rest[-1]] = value
    with pytest.raises(ConfigError, match=match):
      tasks_lib.get_task(config).validate()
  with pytest.raises(ValueError, match='unknown variant'):
    phalp_configs.get_config('huge')


def test_tiny_config_trains_and_loads_as_a_predictor(tmp_path):
  from launch import train as train_lib
  config = phalp_configs.get_config('tiny')
  config.log.progress_bar = False
  config.log.tensorboard = False
  config.log.every_steps = 1
  summary = train_lib.train(config, str(tmp_path), devices=jax.devices()[:1])
  assert summary['step'] == config.train.total_steps
  from launch import metrics as metrics_lib
  records = [r for r in metrics_lib.read_metrics(str(tmp_path)) if 'train/loss' in r]
  losses = np.array([r['train/loss'] for r in records])
  baseline = np.array([r['train/last_obs_mse'] for r in records])
  assert np.all(np.isfinite(losses)) and np.all(baseline > 0)
  # The untrained model is the last observation (gap 0); training makes it beat that on the same
  # batches (a paired comparison: batch-to-batch noise cancels).
  assert abs(losses[0] - baseline[0]) < 1e-6
  assert np.mean(losses[-20:] - baseline[-20:]) < 0
  assert {'eval/mse', 'eval/last_obs_mse'} <= set(summary['metrics'])

  predict = pose.load_pose_predictor(str(tmp_path))
  expected = pose.make_pose_predictor(summary['final_params'], config)
  hist = np.random.default_rng(0).normal(size=(5, config.model.pose_dim)).astype(np.float32)
  times, valid = np.arange(5.0), np.ones(5, bool)
  out = jax.jit(predict)(hist, times, valid, 9.0)
  np.testing.assert_allclose(out, expected(hist, times, valid, 9.0), rtol=1e-6, atol=1e-6)
  assert np.abs(out - hist[-1]).max() > 0  # trained: no longer the last observation
