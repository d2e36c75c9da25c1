"""Tests of the synthetic LART benchmark (lart_jax/synthetic.py): layout, determinism, geometry,
labels, files, and the benchmark property measured with small fitted classifiers.

The benchmark property: on each interaction and its look-alike, a classifier that sees only the
person's own pose sequence is at chance, one that also sees where the other people are and which
way they face is not; on the scene classes the appearance vector lifts accuracy. The classifiers
are L2-regularised logistic regressions (numpy, Newton steps) on hand-made features, trained and
tested on different videos.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from lart_jax import ava
from lart_jax import synthetic as syn

# Short videos, interaction and scene units only: many examples per second of test time.
BENCH = syn.SyntheticConfig(frames=(64, 72), pose_weight=0.0, interaction_weight=0.6,
                            scene_weight=0.4)


@pytest.fixture(scope='module')
def videos():
  return syn.make_videos(BENCH, 320, seed=11)


# ---------------------------------------------------------------------------------------------
# Layout, determinism, geometry, labels


def test_layout_keys_shapes_dtypes():
  cfg = syn.SyntheticConfig()
  vids = syn.make_videos(cfg, 4, seed=0)
  assert all(cfg.people[0] <= len(v) <= cfg.people[1] for v in vids)
  for v in vids:
    for tr in v:
      t = tr[syn.FID].shape[0]
      assert cfg.frames[0] // 4 <= t <= cfg.frames[1]
      assert tr[syn.FID].dtype == np.int64 and np.all(np.diff(tr[syn.FID]) == 1)
      expected = {syn.POSE: ((t, 1, 229), np.float32), syn.JOINTS: ((t, 1, 45, 3), np.float32),
                  syn.CAMERA: ((t, 1, 3), np.float32), syn.HAS_DETECTION: ((t, 1), np.bool_),
                  syn.LABELS: ((t, 1, 80), np.float32), syn.HAS_GT: ((t, 1), np.int64),
                  syn.FRAME_BBOX: ((t, 1, 4), np.float32), syn.FRAME_SIZE: ((t, 1, 2), np.float32),
                  syn.FRAME_CONF: ((t, 1), np.float32),
                  syn.APPEARANCE_KEY: ((t, 1, cfg.appearance_dim), np.float32)}
      for key, (shape, dtype) in expected.items():
        assert tr[key].shape == shape and tr[key].dtype == dtype, key
        assert np.all(np.isfinite(tr[key])), key
      assert len(tr[syn.FRAME_NAME]) == t and tr[syn.FRAME_NAME][0].startswith(tr[syn.VIDEO_ID])
      assert set(np.unique(tr[syn.HAS_GT])) <= {0, 1, 2}
      np.testing.assert_array_equal(tr[syn.POSE][:, 0, syn.LOCATION], tr[syn.CAMERA][:, 0])
      box = tr[syn.FRAME_BBOX][:, 0]
      h, w = cfg.image_size
      assert np.all(box[:, 2:] > 0) and np.all(box[:, 0] + box[:, 2] <= w + 1e-3)
      assert np.all(box[:, 1] + box[:, 3] <= h + 1e-3)
      conf = tr[syn.FRAME_CONF][:, 0]
      assert np.all((conf > 0) == tr[syn.HAS_DETECTION][:, 0])


def test_deterministic_per_seed_and_video():
  cfg = syn.SyntheticConfig()
  a, b, c = (syn.make_videos(cfg, 3, seed=s) for s in (5, 5, 6))
  for va, vb in zip(a, b):
    assert len(va) == len(vb)
    for ta, tb in zip(va, vb):
      for key in syn.TRACK_KEYS:
        np.testing.assert_array_equal(np.asarray(ta[key]), np.asarray(tb[key]))
  assert not np.array_equal(a[0][0][syn.POSE], c[0][0][syn.POSE])
  # Video i depends only on (seed, i), not on how many videos are made.
  np.testing.assert_array_equal(syn.make_videos(cfg, 1, seed=5)[0][0][syn.POSE], a[0][0][syn.POSE])


def test_rotations_orthonormal_and_joints_consistent():
  tracks = [t for v in syn.make_videos(syn.SyntheticConfig(), 3, seed=2) for t in v]
  for tr in tracks:
    pose = tr[syn.POSE][:, 0].astype(np.float64)
    rots = np.concatenate([pose[:, syn.BODY_POSE], pose[:, syn.GLOBAL_ORIENT]], 1)
    rots = rots.reshape(-1, 24, 3, 3)
    np.testing.assert_allclose(rots @ np.swapaxes(rots, -1, -2), np.broadcast_to(np.eye(3),
                               rots.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-5)
    # The joints are the forward kinematics of the stored rotations (root = global orientation).
    body = rots[:, :23]
    scale = np.linalg.norm(tr[syn.JOINTS][0, 0, syn.L_HIP]) / np.linalg.norm(syn._OFFSETS[1])
    joints = syn.forward_kinematics(rots[:, 23], body, scale)
    np.testing.assert_allclose(joints, tr[syn.JOINTS][:, 0], atol=2e-3)
  # Upright postures: the head is above the pelvis in the camera frame (y down).
  standing = [t for t in tracks if t[syn.INFO_KEY]['style'] in ('stand', 'gesture', 'clap')]
  assert standing and all(np.mean(t[syn.JOINTS][:, 0, syn.HEAD, 1]) < -0.4 for t in standing)


def test_labels_multi_and_inside_evaluated_classes():
  cfg = syn.SyntheticConfig()
  tracks = [t for v in syn.make_videos(cfg, 40, seed=3) for t in v]
  evaluated = set(ava.EVALUATED_IDS)
  emitted = set()
  multi = 0
  for tr in tracks:
    gt = tr[syn.HAS_GT][:, 0] == syn.GT
    labels = tr[syn.LABELS][:, 0]
    ids = {int(i) + 1 for i in np.nonzero(labels[gt].max(0) if gt.any() else labels.max(0))[0]}
    emitted |= ids
    if gt.any():
      assert ids == set(tr[syn.INFO_KEY]['labels'])
      assert np.all(labels[gt] == labels[gt][0])  # exact at ground-truth frames
      multi += len(ids) >= 2
    assert np.all(labels[tr[syn.HAS_GT][:, 0] == syn.NONE] == 0)
    # Keyframes at 1 Hz: frames k * fps, k >= 1.
    assert np.all(tr[syn.FID][gt] % int(cfg.fps) == 0) and np.all(tr[syn.FID][gt] > 0)
  assert emitted <= evaluated
  assert multi >= len(tracks) // 4
  assert set(syn.INTERACTION_IDS + syn.SCENE_IDS + syn.LOOKALIKE_IDS + syn.POSE_IDS) <= evaluated
  for ids in (syn.INTERACTION_IDS, syn.SCENE_IDS):
    assert all(i in emitted for i in ids)
  # Pseudo-labels: noisy copies on detected frames at roughly the configured rate.
  for tr in tracks:
    assert not np.any((tr[syn.HAS_GT][:, 0] == syn.PSEUDO) & ~tr[syn.HAS_DETECTION][:, 0])
  whole = [t for t in tracks if np.all(t[syn.HAS_GT][t[syn.FID] % int(cfg.fps) == 0][1:] ==
                                       syn.GT) and t[syn.FID][0] == 0]  # annotated throughout
  pseudo = np.concatenate([t[syn.HAS_GT][:, 0] == syn.PSEUDO for t in whole])
  free = np.concatenate([t[syn.HAS_DETECTION][:, 0] & (t[syn.HAS_GT][:, 0] != syn.GT)
                         for t in whole])
  assert len(whole) > 20 and abs(pseudo.sum() / free.sum() - cfg.pseudo_label_rate) < 0.05


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='people'):
    syn.SyntheticConfig(people=(3, 3))
  with pytest.raises(ValueError, match='frames'):
    syn.SyntheticConfig(frames=(20, 40))
  with pytest.raises(ValueError, match='style'):
    syn.style_pose('moonwalk', np.zeros(3), {})


def test_write_dataset_and_cli(tmp_path):
  cfg = syn.SyntheticConfig(frames=(64, 70))
  summary = syn.write_dataset(str(tmp_path), cfg, 3, seed=0, split='val', progress=False)
  pkls = sorted((tmp_path / 'val').glob('*/*.pkl'))
  assert len(pkls) == summary['num_tracks'] > 0
  with open(pkls[0], 'rb') as f:
    tr = pickle.load(f)
  assert set(syn.TRACK_KEYS) <= set(tr)
  ref = syn.make_video(cfg, syn.video_seed(0, int(pkls[0].parent.name[3:])), pkls[0].parent.name)
  np.testing.assert_array_equal(tr[syn.POSE], ref[int(pkls[0].stem)][syn.POSE])
  rows = ava.read_csv(str(tmp_path / 'val_gt.csv'))
  assert rows is not None
  _, ids = ava.read_labelmap(str(tmp_path / 'labelmap.pbtxt'))
  assert ids == set(ava.EVALUATED_IDS)
  assert (tmp_path / 'val_excluded_timestamps.csv').read_bytes() == b''
  assert not [p for p in tmp_path.rglob('*') if p.name.endswith('.tmp')]
  out = tmp_path / 'cli'
  proc = subprocess.run([sys.executable, '-m', 'lart_jax.synthetic', '--output', str(out),
                         '--train', '2', '--val', '1', '--seed', '3'], capture_output=True,
                        text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
  assert proc.returncode == 0, proc.stderr
  for name in ('train_gt.csv', 'val_gt.csv', 'labelmap.pbtxt', 'train_info.json'):
    assert (out / name).exists(), name
  assert len(list((out / 'train').glob('*/*.pkl'))) >= 2


# ---------------------------------------------------------------------------------------------
# The benchmark property


def _detected(tr):
  return tr[syn.HAS_DETECTION][:, 0]


def _own_features(tr) -> np.ndarray:
  """Own pose sequence only: per-joint rotation angle (mean, std), orientation, location, box."""
  d = _detected(tr)
  pose = tr[syn.POSE][d, 0].astype(np.float64)
  rots = pose[:, syn.BODY_POSE].reshape(-1, 23, 3, 3)
  angle = np.arccos(np.clip((np.trace(rots, axis1=-2, axis2=-1) - 1) / 2, -1, 1))
  orient = pose[:, syn.GLOBAL_ORIENT].reshape(-1, 3, 3)
  loc = pose[:, syn.LOCATION]
  wrists = tr[syn.JOINTS][d, 0][:, [syn.L_WRIST, syn.R_WRIST]]
  speed = np.linalg.norm(np.diff(wrists, axis=0), axis=-1).mean(0)
  box = tr[syn.FRAME_BBOX][d, 0]
  return np.concatenate([angle.mean(0), angle.std(0), orient.mean(0).ravel(), loc.mean(0),
                         speed, [np.log(box[:, 3].mean()), np.log(box[:, 2].mean())]])


def _forward_xz(tr) -> np.ndarray:
  """Per-frame facing direction on the ground (body z axis in camera x, z), unit length."""
  f = tr[syn.POSE][:, 0, syn.GLOBAL_ORIENT].reshape(-1, 3, 3)[:, [0, 2], 2].astype(np.float64)
  return f / np.linalg.norm(f, axis=-1, keepdims=True)


def _context_features(tr, video) -> np.ndarray:
  """Relations to the other tracks over the frames both are detected: the nearest person's
  distance, how much each faces the other, and the most-faced person within 3.5 m."""
  rel = []
  loc_i, fwd_i = tr[syn.CAMERA][:, 0][:, [0, 2]], _forward_xz(tr)
  for other in video:
    if other is tr:
      continue
    common, ia, ib = np.intersect1d(tr[syn.FID], other[syn.FID], return_indices=True)
    both = _detected(tr)[ia] & _detected(other)[ib]
    if both.sum() < 4:
      continue
    ia, ib = ia[both], ib[both]
    v = other[syn.CAMERA][ib, 0][:, [0, 2]] - loc_i[ia]
    dist = np.linalg.norm(v, axis=-1)
    u = v / np.maximum(dist, 1e-6)[:, None]
    rel.append((dist.mean(), (fwd_i[ia] * u).sum(-1).mean(),
                -(_forward_xz(other)[ib] * u).sum(-1).mean()))
  if not rel:
    return np.array([10.0, 0.0, 0.0, -1.0, -1.0])
  rel = np.array(rel)
  near = rel[np.argmin(rel[:, 0])]
  close = rel[rel[:, 0] < 3.5]
  faced = close[:, 1].max() if close.size else -1.0
  mutual = (close[:, 1] + close[:, 2]).max() / 2 if close.size else -1.0
  return np.array([min(near[0], 10.0), near[1], near[2], faced, mutual])


def _logistic_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, l2: float = 1.0
                       ) -> float:
  """Balanced accuracy on ``~train`` of an L2 logistic regression fitted on ``train``."""
  mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
  z = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
  w = np.zeros(z.shape[1])
  reg = l2 * np.eye(z.shape[1])
  reg[-1, -1] = 0.0
  zt, yt = z[train], y[train].astype(np.float64)
  for _ in range(25):  # Newton steps
    p = 1 / (1 + np.exp(-zt @ w))
    grad = zt.T @ (p - yt) + reg @ w
    hess = zt.T @ (zt * (p * (1 - p))[:, None]) + reg
    w -= np.linalg.solve(hess, grad)
  pred = (z[~train] @ w) > 0
  yv = y[~train].astype(bool)
  return float(0.5 * (pred[yv].mean() + (~pred[~yv]).mean()))


def _split(videos_of: np.ndarray) -> np.ndarray:
  return videos_of % 5 < 3  # 60% of the videos train, the rest test


def _interaction_examples(videos):
  own, ctx, y, fam, vid = [], [], [], [], []
  for v_i, video in enumerate(videos):
    for tr in video:
      info = tr[syn.INFO_KEY]
      if (info['group'] != 'interaction' or not info['annotated']
          or (info['family'] == 'watch' and info['member'] == 1)):
        continue  # unannotated people are context only; the watched performer is a pose class
      own.append(_own_features(tr))
      ctx.append(_context_features(tr, video))
      y.append(info['variant'] == 'interaction')
      fam.append(list(syn.INTERACTIONS).index(info['family']))
      vid.append(v_i)
  return (np.array(own), np.array(ctx), np.array(y), np.array(fam), np.array(vid))


def test_interactions_need_other_people(videos):
  own, ctx, y, fam, vid = _interaction_examples(videos)
  train = _split(vid)
  assert len(y) > 300 and 0.4 < y.mean() < 0.6  # interaction and look-alike persons balanced
  # The own features are informative: they tell the families (motions) apart...
  fam_acc = np.mean([_logistic_accuracy(own, fam == k, train) for k in range(len(syn.INTERACTIONS))])
  # ...but not an interaction from its look-alike, which the other people's placement does.
  own_acc = _logistic_accuracy(own, y, train)
  both_acc = _logistic_accuracy(np.concatenate([own, ctx], 1), y, train)
  per_family = {name: (_logistic_accuracy(own[fam == k], y[fam == k], train[fam == k]),
                       _logistic_accuracy(ctx[fam == k], y[fam == k], train[fam == k]))
                for k, name in enumerate(syn.INTERACTIONS)}
  print(f'\ninteractions: n={len(y)} family-from-own {fam_acc:.3f} own {own_acc:.3f} '
        f'own+context {both_acc:.3f} per family (own, context) '
        + ' '.join(f'{k} {a:.2f}/{b:.2f}' for k, (a, b) in per_family.items()))
  assert fam_acc > 0.9
  assert own_acc < 0.6
  assert both_acc > 0.8
  assert all(b > 0.7 for _, b in per_family.values())


def test_scene_classes_need_appearance(videos):
  own, appe, y, vid = [], [], [], []
  for v_i, video in enumerate(videos):
    for tr in video:
      info = tr[syn.INFO_KEY]
      if info['group'] == 'scene' and info['annotated']:
        own.append(_own_features(tr))
        appe.append(tr[syn.APPEARANCE_KEY][_detected(tr), 0].mean(0))
        y.append(info['variant'] == 'scene')
        vid.append(v_i)
  own, appe, y, vid = map(np.array, (own, appe, y, vid))
  train = _split(vid)
  assert len(y) > 150 and 0.35 < y.mean() < 0.65
  own_acc = _logistic_accuracy(own, y, train)
  both_acc = _logistic_accuracy(np.concatenate([own, appe], 1), y, train)
  print(f'\nscene: n={len(y)} own {own_acc:.3f} own+appearance {both_acc:.3f}')
  assert own_acc < 0.62
  assert both_acc > 0.85
