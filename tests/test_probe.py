"""Probes on frozen Toto features: head shapes, per-layer feature extraction, learning a separable
task, joint training over layers equal to training one layer alone, and the command line on a
tiny run (token shards with labels, and a local TFDS image split)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toto_jax import probe as P


def _separable(layers=2, n=240, k=6, d=8, classes=4, seed=0):
  """Token features whose class shifts every token of layer 1 (strongly token 2); layer 0 is
  noise."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  centers = 2.0 * rng.normal(size=(classes, d))
  x = rng.normal(size=(layers, n, k, d)).astype(np.float32)
  x[1:, :, 2] += centers[y]
  x[1:] += 0.5 * centers[y][:, None]
  return P.Features(x.mean(axis=2), x), y


def _split(f: P.Features, y, n_train):
  return (P.Features(f.pooled[:, :n_train], f.tokens[:, :n_train]), y[:n_train],
          P.Features(f.pooled[:, n_train:], f.tokens[:, n_train:]), y[n_train:])


def test_probe_heads_shapes():
  x = jnp.ones((3, 5, 8))
  for kind in P.PROBES:
    probe = P.make_probe(kind, 7, num_heads=2)
    params = probe.init(jax.random.key(0), x)
    assert probe.apply(params, x).shape == (3, 7)
  linear = P.LinearProbe(7)
  params = linear.init(jax.random.key(0), x)
  # Mean pooling inside the probe equals feeding the pooled feature.
  np.testing.assert_allclose(linear.apply(params, x), linear.apply(params, x.mean(1)))
  with pytest.raises(ValueError, match='num_heads'):
    P.AttentionProbe(2, num_heads=3).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='probe kind'):
    P.make_probe('mlp', 2)


def test_extract_features_every_layer_in_one_pass(small_toto_config):
  from toto_jax.model import Toto
  cfg = small_toto_config().model  # 2 layers, dim 32, 2 frames of 4x4
  model = Toto(cfg)
  tokens = np.random.default_rng(0).integers(4, 64, (5, 33)).astype(np.int32)
  params = model.init(jax.random.key(0), tokens[:1])['params']
  full = P.extract_features(cfg, params, tokens, tokens_spec='all', batch_size=8, progress=False)
  assert full.pooled.shape == (2, 5, 32) and full.tokens.shape == (2, 5, 32, 32)
  _, hidden = model.apply({'params': params}, tokens, return_hidden=True)
  np.testing.assert_allclose(full.tokens, np.asarray(hidden)[:, :, 1:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(full.pooled, full.tokens.mean(axis=2), rtol=1e-5, atol=1e-6)
  frame = P.extract_features(cfg, params, tokens, tokens_spec='frame', tokens_per_frame=16,
                             batch_size=8, progress=False)
  assert frame.tokens.shape == (2, 5, 2, 32)
  np.testing.assert_allclose(frame.tokens[:, :, 1], full.tokens[:, :, 16:].mean(axis=2),
                             rtol=1e-5, atol=1e-6)
  sample = P._token_reducer('sample:3', 32, 16)(jnp.asarray(full.tokens))
  np.testing.assert_array_equal(sample, full.tokens[:, :, [0, 16, 31]])
  assert P._token_reducer('none', 32, 16)(jnp.asarray(full.tokens)) is None
  with pytest.raises(ValueError, match='sample:K'):
    P.parse_token_spec('sample:0')
  with pytest.raises(ValueError, match='max_len'):
    P.extract_features(cfg, params, np.ones((1, 40), np.int32), progress=False)


@pytest.mark.parametrize('kind', P.PROBES)
def test_each_probe_learns_a_separable_task(kind):
  f, y = _separable()
  train, ty, evaluation, ey = _split(f, y, 180)
  settings = P.TrainSettings(epochs=15, batch_size=60, lr=1e-2, weight_decay=0.0)
  r = P.probe_layers(kind, train, ty, evaluation, ey, 4, settings, progress=False)
  assert len(r.eval_accuracy) == 2
  assert r.eval_accuracy[1] > 0.8, r        # chance is ~0.25
  assert r.eval_accuracy[0] < 0.5, r        # noise layer
  assert r.best_layer == 2
  assert r.loss_history[-1] < r.loss_history[0]


def test_joint_training_over_layers_equals_training_each_layer_alone():
  f, y = _separable(layers=3, n=64)
  settings = P.TrainSettings(epochs=3, batch_size=32, lr=1e-2, seed=3)
  keys = jax.random.split(jax.random.key(7), 3)
  probe = P.make_probe('attention', 4)
  joint, _ = P.train_probes(probe, f.tokens, y, 4, settings, init_keys=keys, progress=False)
  for layer in (0, 2):
    alone, _ = P.train_probes(probe, f.tokens[layer:layer + 1], y, 4, settings,
                              init_keys=keys[layer:layer + 1], progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(alone), jax.tree_util.tree_leaves(joint)):
      np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[layer], rtol=1e-5, atol=1e-6)


def test_plot_is_written(tmp_path):
  r = P.ProbeResult('linear', [0.3, 0.6, 0.5], [0.4, 0.8, 0.9], [1.0, 0.5])
  path = str(tmp_path / 'acc.png')
  P.plot_accuracy_vs_depth([r], path, chance=0.25)
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  assert r.best_layer == 2 and r.best_accuracy == 0.6


# ------------------------------------------------------------------------------------------------
# The command line on a tiny run
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_run(baseline_run):
  """The suite's shared 8-step small Toto run (2 layers, 2 frames of 4x4 codes, codebook 60)."""
  return baseline_run.workdir


def _labelled_shards(path: str, n: int, seed: int) -> np.ndarray:
  """Clips of 2 frames x 4x4 codes whose class (0..2) sets which third of the codebook most
  codes come from: separable from the pooled features even of a barely trained model."""
  from toto_jax import shards
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n)
  records = []
  for c in labels:
    codes = rng.integers(0, 60, (2, 4, 4))
    own = rng.random((2, 4, 4)) < 0.7
    codes[own] = rng.integers(20 * c, 20 * c + 20, int(own.sum()))
    records.append(shards.encode_record(codes, 'video', 'test', int(c)))
  records.append(shards.encode_record(np.zeros((2, 4, 4), np.int32), 'video', 'test', -1))  # unlabelled
  shards.write_shard(path, records)
  return labels


def test_cli_probes_labelled_token_shards(tiny_run, tmp_path, capsys):
  from launch import probe as probe_cli
  _labelled_shards(str(tmp_path / 'train-00000.array_record'), 150, 0)
  _labelled_shards(str(tmp_path / 'eval-00000.array_record'), 60, 1)
  out_dir = str(tmp_path / 'out')
  out = probe_cli.main(['--workdir', tiny_run, '--train', str(tmp_path / 'train-*.array_record'),
                        '--eval', str(tmp_path / 'eval-*.array_record'), '--probe', 'all',
                        '--tokens', 'frame', '--epochs', '12', '--lr', '1e-2',
                        '--output', out_dir, '--no_progress'])
  with open(os.path.join(out_dir, probe_cli.RESULTS)) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(out))
  assert saved['layers'] == [1, 2] and saved['num_classes'] == 3
  assert saved['train_examples'] == 150 and saved['eval_data']['unlabelled'] == 1
  for kind in P.PROBES:
    acc = saved['probes'][kind]['eval_accuracy']
    assert len(acc) == 2 and saved['probes'][kind]['best_layer'] in (1, 2)
  assert saved['probes']['linear']['best_accuracy'] > 0.8, saved['probes']['linear']
  assert open(os.path.join(out_dir, probe_cli.PLOT), 'rb').read(4) == b'\x89PNG'
  printed = capsys.readouterr().out
  assert 'best:' in printed and 'layer' in printed
  # One layer only; an unknown layer is an error naming the flag.
  one = probe_cli.main(['--workdir', tiny_run, '--train', str(tmp_path / 'train-*.array_record'),
                        '--eval', str(tmp_path / 'eval-*.array_record'), '--probe', 'linear',
                        '--layers', '2', '--epochs', '2', '--output', str(tmp_path / 'one'),
                        '--no_progress'])
  assert one['layers'] == [2] and len(one['probes']['linear']['eval_accuracy']) == 1
  with pytest.raises(SystemExit):
    probe_cli.main(['--workdir', tiny_run, '--train', str(tmp_path / 'train-*.array_record'),
                    '--eval', str(tmp_path / 'eval-*.array_record'), '--layers', '5',
                    '--output', str(tmp_path / 'bad'), '--no_progress'])
  assert '--layers' in capsys.readouterr().err


@pytest.fixture(scope='module')
def tfds_two_classes(tmp_path_factory) -> str:
  """A 30-image TFDS split 'probe_test_images' (array_record, built without TensorFlow): dark
  images are class 0, bright ones class 1."""
  tfds = pytest.importorskip('tensorflow_datasets')
  import cv2
  data_dir = str(tmp_path_factory.mktemp('tfds_probe'))

  class ProbeTestImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      rng = np.random.default_rng(0)
      for i in range(30):
        label = i % 2
        img = rng.integers(0, 100, (16, 16, 3)) + 150 * label
        yield i, {'image': cv2.imencode('.png', img.astype(np.uint8))[1].tobytes(),
                  'label': label}

  ProbeTestImages(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


def test_cli_probes_a_local_tfds_split(tiny_run, tfds_two_classes, tmp_path, monkeypatch,
                                       helpers):
  from launch import probe as probe_cli
  from launch import tokenize as tokenize_lib
  tok = helpers.random_vq_tokenizer()
  monkeypatch.setattr(tokenize_lib, 'load_tokenizer', lambda config: tok)
  out_dir = str(tmp_path / 'out')
  out = probe_cli.main(['--workdir', tiny_run, '--tfds', 'probe_test_images:train',
                        '--data_dir', tfds_two_classes, '--tokenizer', 'unused-weights',
                        '--resolution', '16', '--probe', 'linear', '--epochs', '20',
                        '--lr', '1e-2', '--output', out_dir, '--no_progress'])
  assert out['tfds_train']['images'] == 24 and out['tfds_eval']['images'] == 6
  assert out['tfds_eval']['split'] == 'train[80%:]'
  assert out['sequence_length'] == 1 + tok.grid * tok.grid
  assert out['num_classes'] == 2
  assert os.path.exists(os.path.join(out_dir, 'tokens', 'train', 'manifest.json'))
  assert os.path.exists(os.path.join(out_dir, probe_cli.PLOT))
  assert out['probes']['linear']['best_accuracy'] >= 5 / 6, out['probes']['linear']
