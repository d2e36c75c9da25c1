"""Tests of the synthetic tracking benchmark (phalp_jax/synthetic.py): format, knobs, difficulty.

Every scene here takes tens of milliseconds; the linkers below are tiny inline references (box-IoU
Hungarian between adjacent frames, and nearest running-mean appearance over any gap), not the
project's trackers, so this file stands on its own.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from phalp_jax import synthetic

# Isolates one knob: no misses, false positives, cuts or exits unless a test turns them on.
CLEAN = dict(miss_rate=0.0, false_positive_rate=0.0, shot_cuts=0, enter_exit=False)


def _true_gaps(scene: dict) -> np.ndarray:
  """Lengths of the runs of frames in which a gt identity has no detection between two that do."""
  out = []
  for g in np.unique(scene['gt_id'][scene['gt_id'] >= 0]):
    d = np.diff(np.sort(scene['frame'][scene['gt_id'] == g]))
    out.extend(d[d > 1] - 1)
  return np.asarray(out, dtype=np.int64)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  x0 = np.maximum(a[:, None, 0], b[None, :, 0])
  y0 = np.maximum(a[:, None, 1], b[None, :, 1])
  x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
  y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  union = a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter
  return inter / union


def iou_link(scene: dict, conf_thr: float = 0.5, iou_thr: float = 0.3):
  """The baseline: Hungarian on box IoU between adjacent frames, no re-identification."""
  keep = np.nonzero(scene['conf'] >= conf_thr)[0]
  frame, box = scene['frame'][keep], scene['bbox'][keep].astype(np.float64)
  pred = np.full(keep.size, -1)
  next_id, prev, prev_t = 0, np.zeros(0, dtype=np.int64), -2
  for t in np.unique(frame):
    cur = np.nonzero(frame == t)[0]
    if prev.size and prev_t == t - 1:
      iou = _iou(box[prev], box[cur])
      r, c = linear_sum_assignment(-iou)
      ok = iou[r, c] >= iou_thr
      pred[cur[c[ok]]] = pred[prev[r[ok]]]
    new = cur[pred[cur] < 0]
    pred[new] = np.arange(next_id, next_id + new.size)
    next_id += new.size
    prev, prev_t = cur, t
  return keep, pred


def appearance_link(scene: dict, conf_thr: float = 0.5, max_dist: float = 0.55):
  """Appearance only: Hungarian on L2 distance to every track's running-mean embedding, over
  any gap (tracks never die), a new track when nothing is within ``max_dist``."""
  keep = np.nonzero(scene['conf'] >= conf_thr)[0]
  frame, appe = scene['frame'][keep], scene['appe'][keep].astype(np.float64)
  pred = np.full(keep.size, -1)
  tracks = np.zeros((0, appe.shape[1]))
  for t in np.unique(frame):
    cur = np.nonzero(frame == t)[0]
    if len(tracks):
      d = np.linalg.norm(appe[cur, None] - tracks[None], axis=-1)
      r, c = linear_sum_assignment(d)
      ok = d[r, c] < max_dist
      pred[cur[r[ok]]] = c[ok]
      tracks[c[ok]] = 0.7 * tracks[c[ok]] + 0.3 * appe[cur[r[ok]]]
    new = cur[pred[cur] < 0]
    pred[new] = np.arange(len(tracks), len(tracks) + new.size)
    tracks = np.concatenate([tracks, appe[new]])
  return keep, pred


def identity_stats(scene: dict, keep: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
  """(identity breaks per gt identity = predicted ids it is split into - 1, purity = share of a
  gt identity's detections under its most common predicted id)."""
  gt = scene['gt_id'][keep]
  breaks, major, total, ids = 0, 0, 0, np.unique(gt[gt >= 0])
  for g in ids:
    _, counts = np.unique(pred[gt == g], return_counts=True)
    breaks += counts.size - 1
    major += counts.max()
    total += counts.sum()
  return breaks / ids.size, major / total


# ---------------------------------------------------------------------------------------------


def test_keys_shapes_dtypes():
  cfg = synthetic.get_config('hard')
  s = synthetic.make_scene(cfg, seed=1)
  n = s['frame'].shape[0]
  assert n > 0
  expected = {'frame': ((n,), np.int64), 'bbox': ((n, 4), np.float32), 'conf': ((n,), np.float32),
              'appe': ((n, cfg.appearance_dim), np.float32),
              'pose': ((n, cfg.pose_dim), np.float32), 'loca': ((n, 3), np.float32),
              'gt_id': ((n,), np.int64), 'image_size': ((2,), np.int64),
              'shot': ((cfg.num_frames,), np.int64)}
  assert set(synthetic.CANONICAL_KEYS) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert s[key].shape == shape and s[key].dtype == dtype, key
  assert s['image_size'].tolist() == list(cfg.image_size)
  assert np.all(np.diff(s['frame']) >= 0) and s['frame'].min() >= 0
  assert s['frame'].max() < cfg.num_frames
  assert set(np.unique(s['gt_id'])) <= set(range(-1, cfg.people))
  assert (s['gt_id'] == -1).any()  # false positives present in 'hard'
  assert np.all((s['conf'] > 0) & (s['conf'] <= 1))
  np.testing.assert_allclose(np.linalg.norm(s['appe'], axis=1), 1.0, atol=1e-5)
  assert np.all(np.isfinite(s['loca'])) and np.all(np.isfinite(s['pose']))
  gt = s['gt_tracks']
  assert gt.ndim == 2 and gt.shape[1] == 6 and s['gt_visibility'].shape == (len(gt),)
  # Every true detection is a ground-truth row; ground truth also holds the undetected.
  det = set(zip(s['frame'][s['gt_id'] >= 0].tolist(), s['gt_id'][s['gt_id'] >= 0].tolist()))
  rows = set(zip(gt[:, 0].astype(int).tolist(), gt[:, 1].astype(int).tolist()))
  assert det < rows
  assert s['info']['camera'].tolist() == s['shot'].tolist()


def test_deterministic_per_seed():
  a = synthetic.make_scene('hard', seed=7)
  b = synthetic.make_scene('hard', seed=7)
  c = synthetic.make_scene('hard', seed=8)
  for key in (*synthetic.CANONICAL_KEYS, 'gt_tracks'):
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert a['frame'].shape != c['frame'].shape or not np.array_equal(a['bbox'], c['bbox'])
  # config.seed is the default seed; a (seed, index) pair is a different stream.
  d = synthetic.make_scene(synthetic.get_config('hard', seed=7))
  np.testing.assert_array_equal(a['appe'], d['appe'])
  e = synthetic.make_scene('hard', seed=(7, 0))
  assert not np.array_equal(a['bbox'], e['bbox'][:len(a['bbox'])])


def test_boxes_inside_image():
  s = synthetic.make_scene('hard', seed=2)
  img_h, img_w = s['image_size']
  for boxes in (s['bbox'].astype(np.float64), s['gt_tracks'][:, 2:]):
    x, y, w, h = boxes.T
    assert np.all(w > 0) and np.all(h > 0)
    assert np.all(x >= 0) and np.all(y >= 0)
    assert np.all(x + w <= img_w + 1e-3) and np.all(y + h <= img_h + 1e-3)


def test_miss_rate_removes_that_share_of_detections():
  base = synthetic.get_config('medium', **CLEAN)
  counts = {}
  for rate in (0.0, 0.3):
    cfg = synthetic.get_config(base, miss_rate=rate)
    counts[rate] = sum((synthetic.make_scene(cfg, seed=s)['gt_id'] >= 0).sum() for s in range(3))
  s0 = synthetic.make_scene(base, seed=0)
  info = s0['info']
  assert (s0['gt_id'] >= 0).sum() == (info['detected']).sum()
  assert not info['missed'].any()
  assert counts[0.3] / counts[0.0] == pytest.approx(0.7, abs=0.08)


def test_occlusion_hides_people_for_many_frames():
  base = synthetic.get_config('medium', **CLEAN)
  with_occ, without = [], []
  for seed in range(3):
    scene = synthetic.make_scene(base, seed=seed)
    with_occ.extend(_true_gaps(scene))
    without.extend(_true_gaps(synthetic.make_scene(synthetic.get_config(base, occlusion=False),
                                                   seed=seed)))
    # Every undetected ground-truth person is occluded (nothing else can hide them here).
    info = scene['info']
    hidden = (info['in_image'] >= 0.5) & ~info['detected']
    assert np.all(info['occluded'][hidden])
  assert not without                     # people stay in view: no gaps without occlusion
  assert len(with_occ) >= 10
  assert sum(g >= 5 for g in with_occ) >= 5  # long occlusions, not flicker


def test_shot_cuts_move_everyone_but_keep_identities():
  cfg = synthetic.get_config('medium', shot_cuts=3, miss_rate=0.0, false_positive_rate=0.0,
                             box_noise=0.0)
  s = synthetic.make_scene(cfg, seed=0)
  cuts = s['info']['cut_frames']
  assert len(cuts) == 3
  np.testing.assert_array_equal(s['shot'], np.searchsorted(cuts, np.arange(cfg.num_frames),
                                                           side='right'))
  box = {(int(t), int(g)): b for t, g, b in zip(s['frame'], s['gt_id'], s['bbox'])}
  at_cut, elsewhere = [], []
  for (t, g), b in box.items():
    if (t - 1, g) in box:  # same person in consecutive frames: motion in box heights, box IoU
      prev = box[(t - 1, g)].astype(np.float64)
      jump = np.abs(b[:2] - prev[:2]).max() / b[3]
      (at_cut if t in cuts else elsewhere).append((jump, _iou(b[None], prev[None])[0, 0]))
  at_cut, elsewhere = np.array(at_cut), np.array(elsewhere)
  assert len(at_cut) >= 6  # identities persist across every cut
  assert np.median(at_cut[:, 0]) > 0.5 and np.percentile(elsewhere[:, 0], 99) < 0.1
  assert np.mean(at_cut[:, 1] < 0.3) > 0.9 and np.percentile(elsewhere[:, 1], 1) > 0.6
  for c in cuts:
    before = set(s['gt_id'][(s['frame'] >= c - 5) & (s['frame'] < c)].tolist()) - {-1}
    after = set(s['gt_id'][(s['frame'] >= c) & (s['frame'] < c + 5)].tolist()) - {-1}
    assert len(before & after) >= 2


def test_lookalike_shrinks_distances_between_identities():
  def spread(lookalike: float) -> float:
    s = synthetic.make_scene(synthetic.get_config('medium', lookalike=lookalike, **CLEAN), seed=0)
    ids = np.unique(s['gt_id'][s['gt_id'] >= 0])
    means = np.stack([s['appe'][s['gt_id'] == g].mean(0) for g in ids])
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    return d[np.triu_indices(len(ids), 1)].mean()
  d0, d_half, d1 = spread(0.0), spread(0.5), spread(1.0)
  assert d0 > 1.0           # independent identities: about sqrt(2) apart
  assert d1 < 0.25 * d0 and d1 < d_half < d0


def test_nearness_decreases_with_distance():
  cfg = synthetic.get_config('medium', nearness_noise=0.0, **CLEAN)
  s = synthetic.make_scene(cfg, seed=3)
  true = s['gt_id'] >= 0
  depth = s['info']['depth'][s['frame'][true], s['gt_id'][true]]
  np.testing.assert_allclose(s['loca'][true, 2], np.log(1 / depth), rtol=1e-5, atol=1e-5)
  noisy = synthetic.make_scene('medium', seed=3)
  true = noisy['gt_id'] >= 0
  depth = noisy['info']['depth'][noisy['frame'][true], noisy['gt_id'][true]]
  assert np.corrcoef(noisy['loca'][true, 2], depth)[0, 1] < -0.9
  # Boxes of nearer people are taller.
  assert np.corrcoef(noisy['loca'][true, 2], np.log(noisy['bbox'][true, 3]))[0, 1] > 0.8


def test_hard_breaks_iou_linking_but_not_appearance():
  stats = {}
  for preset in ('easy', 'hard'):
    runs = [synthetic.make_scene(preset, seed=s) for s in range(3)]
    stats[preset] = (np.mean([identity_stats(r, *iou_link(r)) for r in runs], 0),
                     np.mean([identity_stats(r, *appearance_link(r)) for r in runs], 0))
  (iou_easy, _), (iou_hard, appe_hard) = stats['easy'], stats['hard']
  print(f'IoU linker breaks/identity, purity: easy {iou_easy}, hard {iou_hard}; '
        f'appearance linker on hard: {appe_hard}')
  assert iou_easy[0] <= 0.5 and iou_easy[1] > 0.95
  assert iou_hard[0] > 3.0 and iou_hard[0] > 10 * max(iou_easy[0], 0.1)
  assert iou_hard[1] < 0.6
  assert appe_hard[0] < 1.0 and appe_hard[1] > 0.9


def test_generation_is_fast():
  cfg = synthetic.get_config('medium')
  assert (cfg.num_frames, cfg.people) == (200, 6)
  times = []
  for seed in range(3):
    start = time.perf_counter()
    synthetic.make_scene(cfg, seed=seed)
    times.append(time.perf_counter() - start)
  assert min(times) < 0.1


def test_save_and_write_benchmark(tmp_path):
  s = synthetic.make_scene('medium', seed=0)
  path = str(tmp_path / 'one.npz')
  synthetic.save_scene_npz(s, path)
  with np.load(path) as f:
    assert sorted(f.files) == sorted(synthetic.CANONICAL_KEYS)
    for key in synthetic.CANONICAL_KEYS:
      np.testing.assert_array_equal(f[key], s[key])
  with pytest.raises(ValueError, match='appe'):
    synthetic.save_scene_npz({k: v for k, v in s.items() if k != 'appe'}, path)

  cfg = synthetic.get_config('hard', num_frames=40, shot_cuts=1)
  out = tmp_path / 'bench'
  paths = synthetic.write_benchmark(str(out), cfg, num_videos=2, seed=5, progress=False)
  assert paths == [str(out / '0000.npz'), str(out / '0001.npz')]
  assert sorted(os.listdir(out)) == ['0000.npz', '0001.npz', 'benchmark.json', 'gt']
  assert sorted(os.listdir(out / 'gt')) == ['0000.txt', '0001.txt']
  scene = synthetic.make_scene(cfg, seed=(5, 1))
  with np.load(paths[1]) as f:
    np.testing.assert_array_equal(f['bbox'], scene['bbox'])
  rows = np.loadtxt(out / 'gt' / '0001.txt', delimiter=',', ndmin=2)
  assert rows.shape == (len(scene['gt_tracks']), 9)
  np.testing.assert_array_equal(rows[:, :2], scene['gt_tracks'][:, :2] + 1)  # MOT: 1-based
  np.testing.assert_allclose(rows[:, 2:6], scene['gt_tracks'][:, 2:], atol=0.006)
  assert np.all(rows[:, 6:] == 1)


def test_config_validation():
  with pytest.raises(ValueError, match='lookalike'):
    synthetic.SceneConfig(lookalike=1.5)
  with pytest.raises(ValueError, match='shot_cuts'):
    synthetic.SceneConfig(num_frames=30, shot_cuts=5)
  with pytest.raises(ValueError, match='preset'):
    synthetic.make_scene('impossible')
