"""Label propagation (DAVIS protocol): J and F on hand-made masks, propagation with oracle and with
random features on synthetic sprite videos with known masks, and the command line on a tiny run."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from toto_jax import label_propagation as lp


def _square(size, top, left, side):
  m = np.zeros((size, size), bool)
  m[top:top + side, left:left + side] = True
  return m


def test_j_and_f_on_hand_made_masks():
  a = _square(40, 10, 10, 10)
  assert lp.davis_j(a, a) == 1.0 and lp.davis_f(a, a) == 1.0
  empty = np.zeros_like(a)
  assert lp.davis_j(empty, empty) == 1.0 and lp.davis_f(empty, empty) == 1.0
  far = _square(40, 25, 25, 10)
  assert lp.davis_j(a, far) == 0.0 and lp.davis_f(a, far) == 0.0
  assert lp.davis_j(a, empty) == 0.0 and lp.davis_f(a, empty) == 0.0
  # Shifted by 5 columns: overlap 10x5 = 50 of union 150.
  assert lp.davis_j(a, _square(40, 10, 15, 10)) == pytest.approx(1 / 3)
  # Shifted by one pixel: within the ceil(0.008 * diagonal) = 1 pixel tolerance -> F = 1.
  assert lp.davis_f(a, _square(40, 11, 10, 10)) == 1.0
  assert lp.davis_f(a, _square(40, 13, 10, 10)) < 0.7
  # Boundary map: a pixel differing from its right / lower / lower-right neighbour.
  b = lp.seg2bmap(_square(8, 2, 2, 3))
  assert b.sum() == 12 and b[1, 1] and b[4, 4] and not b[3, 3]  # the 4x4 ring rows/cols 1..4
  stats = lp.db_statistics(np.array([1.0, 1.0, 0.0, 0.0]))
  assert stats == {'mean': 0.5, 'recall': 0.5, 'decay': 1.0}
  # evaluate_sequence scores frames 1..T-2 only.
  gt = np.stack([a, a, a, a]).astype(int)
  pred = np.stack([empty, a, a, empty]).astype(int)
  r = lp.evaluate_sequence(gt, pred)
  assert list(r) == [1] and r[1]['J'].tolist() == [1.0, 1.0]
  s = lp.summarize([r])
  assert s['J&F'] == 1.0 and s['objects'] == 1


def _oracle_and_random(resolution=32, grid=16, videos=3, frames=6):
  out = {'oracle': [], 'random': [], 'copy': []}
  rng = np.random.default_rng(0)
  feats, firsts, labels = [], [], []
  for i in range(videos):
    _, lab = lp.synthetic_sequence(0, i, frames=frames, resolution=resolution, stride=2)
    grids = np.stack([lp.labels_to_grid(l, 2, grid, grid) for l in lab])
    yy, xx = np.mgrid[0:grid, 0:grid] / grid
    pos = np.broadcast_to(np.stack([yy, xx], -1), (frames, grid, grid, 2))
    feats.append(np.concatenate([4 * grids, pos], -1))  # true object id (soft) + position
    firsts.append(grids[0])
    labels.append(lab)
  feats, firsts, labels = np.stack(feats), np.stack(firsts), np.stack(labels)
  soft = {'oracle': lp.propagate_batch(feats, firsts),
          'random': lp.propagate_batch(rng.normal(size=feats.shape), firsts)}
  for kind, s in soft.items():
    pred = lp.grid_to_labels(s, resolution, resolution)
    out[kind] = lp.summarize([lp.evaluate_sequence(g, p) for g, p in zip(labels, pred)])
  return out, soft


def test_propagation_recovers_masks_with_oracle_features_not_with_random_ones():
  out, soft = _oracle_and_random()
  assert out['oracle']['J&F'] > 0.9, out['oracle']
  assert out['random']['J&F'] < 0.4, out['random']
  # Soft labels stay distributions; frame 0 is the given mask.
  np.testing.assert_allclose(soft['oracle'].sum(-1), 1.0, atol=1e-5)


def test_context_window_and_radius():
  """A token can only copy labels from within the radius, and from the last n frames + frame 1."""
  h = w = 5
  near = lp.neighbourhood(h, w, 1)
  assert near.shape == (25, 25) and near[12].sum() == 9 and near[0].sum() == 4
  # Frame t's tokens all equal e_t (frames mutually orthogonal); frame 0 is labelled class 1.
  t_len, c = 5, 2
  first = np.zeros((h, w, c), np.float32)
  first[..., 1] = 1.0
  feats = np.zeros((t_len, h, w, t_len), np.float32)
  for t in range(t_len):
    feats[t, ..., t] = 1.0
  soft = np.asarray(lp.propagate(feats, first, n=1, k=3, radius=1, temperature=0.1))
  np.testing.assert_allclose(soft[0], first)
  np.testing.assert_allclose(soft[1:].sum(-1), 1.0, atol=1e-5)
  # With zero similarity everywhere, weights are uniform over the top-k of first + last frame:
  # labels stay class 1 (only class-1 labels exist anywhere).
  np.testing.assert_allclose(soft[1:, ..., 1], 1.0, atol=1e-5)
  with pytest.raises(ValueError, match='k >= 1'):
    lp.propagate(feats, first, k=0)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, small_toto_config):
  from launch import train as train_lib
  config = small_toto_config({'train.total_steps': 2, 'train.warmup_steps': 1, 'checkpoint.every_steps': 2,
                              'data.frames': 4, 'model.max_len': 65})
  workdir = str(tmp_path_factory.mktemp('toto_lp'))
  train_lib.train(config, workdir, devices=jax.devices()[:2])
  return workdir


def test_cli_on_a_tiny_run(tiny_run, tmp_path, monkeypatch, capsys, helpers):
  from launch import label_prop
  tok = helpers.random_vq_tokenizer()  # stride 4: 16 px -> 4x4 codes, the run's grid
  monkeypatch.setattr(label_prop, 'tokenizer_from_workdir', lambda path: tok)
  out = str(tmp_path / 'lp')
  summary = label_prop.main(['--workdir', tiny_run, '--tokenizer_workdir', 'unused',
                             '--videos', 'synthetic', '--num_videos', '3', '--stride', '2',
                             '--layer', 'all', '--output', out, '--no_progress'])
  printed = capsys.readouterr().out
  assert 'best layer' in printed and 'copy f1' in printed
  with open(os.path.join(out, label_prop.RESULTS)) as f:
    saved = json.load(f)
  assert saved['num_videos'] == 3 and sorted(saved['layers']) == ['1', '2']
  for r in list(saved['layers'].values()) + [saved['first_frame_copy'], saved['code_ids']]:
    assert 0.0 <= r['J&F'] <= 1.0 and r['J&F'] == pytest.approx(
        (r['J']['mean'] + r['F']['mean']) / 2)
  assert saved['best']['layer'] in (1, 2) and saved == json.loads(json.dumps(summary))
  for name in (label_prop.PICTURE, label_prop.DEPTH_PLOT):
    assert os.path.getsize(os.path.join(out, name)) > 1000
