"""LART data: released tracklet pickles, validation, examples (windows, padding, context people,
labels), the Grain pipelines (shuffling, sharding, resumption) and the tracker-output converter."""

from __future__ import annotations

import logging
import os
import pickle

import ml_collections
import numpy as np
import pytest

from lart_jax import ava
from lart_jax import data as lart_data
from lart_jax import tracklets as tl

DA = 4


def released(fids, *, seed: int = 0, det=None, has_gt=None, gt_ids=(), pseudo_ids=(),
             location=None, appe_dim: int = DA, **extra) -> dict:
  """One released per-track dict over frames ``fids`` (x, y, w, h boxes; index + dict features)."""
  rng = np.random.default_rng(seed)
  t = len(fids)
  pose = rng.normal(size=(t, 1, 229)).astype(np.float32)
  if location is not None:
    pose[:, 0, -3:] = location
  det = np.ones(t) if det is None else np.asarray(det, float)
  has_gt = np.zeros(t, int) if has_gt is None else np.asarray(has_gt)
  gt = np.zeros((t, 1, 80))
  gt[:, 0, [i - 1 for i in gt_ids]] = 1
  pseudo_row = np.zeros((1, 80))
  pseudo_row[0, [i - 1 for i in pseudo_ids]] = 1
  index = np.where(det > 0, np.arange(t), -1)
  d = {
      'fid': np.asarray(fids).reshape(t, 1, 1),
      'pose_shape': pose,
      '3d_joints': rng.normal(size=(t, 1, 45, 3)),
      'camera': rng.normal(size=(t, 1, 3)),
      'has_detection': det.reshape(t, 1, 1),
      'action_label_gt': gt,
      'action_label_psudo': {int(i): pseudo_row for i in index if i >= 0},
      'has_gt': has_gt.reshape(t, 1, 1),
      'apperance_index': index.reshape(t, 1, 1),
      'apperance_dict': {int(i): rng.normal(size=(1, appe_dim)) for i in index if i >= 0},
      'frame_name': [f'f{int(f):06d}.jpg' for f in fids],
      'frame_size': np.tile([[[480.0, 640.0]]], (t, 1, 1)),
      'frame_bbox': np.tile([[[64.0, 48.0, 32.0, 96.0]]], (t, 1, 1)),
      'frame_conf': np.full((t, 1, 1), 0.9),
  }
  d.update(extra)
  return d


def write(path, d) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    pickle.dump(d, f)
  return str(path)


def tracklet(d, track='0', video='v'):
  return tl.tracklet_from_dict(d, f'<{video}/{track}>', video, track)


def cfg(**kw) -> ml_collections.ConfigDict:
  base = {'input': '', 'eval_input': '', 'max_frames': 8, 'num_people': 3, 'appearance_dim': DA,
          'num_classes': 60, 'fps': 30}
  base.update(kw)
  return ml_collections.ConfigDict(base)


def kw(**over):
  out = {'max_frames': 8, 'num_people': 3, 'appearance_dim': DA, 'num_classes': 60}
  out.update(over)
  return out


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """Two videos: ``vidA/`` (3 tracks, by folder) and a released flat name for ``vidB``."""
  root = tmp_path_factory.mktemp('tracklets')
  write(root / 'vidA' / '0.pkl', released(range(0, 20), seed=1, has_gt=[2] * 20, gt_ids=(12,)))
  write(root / 'vidA' / '1.pkl', released(range(5, 17), seed=2))
  write(root / 'vidA' / '2.pkl', released(range(30, 35), seed=3))
  name = 'ava-train_vidB_000150_3_6.pkl'
  write(root / name, released(range(100, 106), seed=4, has_gt=[1] * 6, pseudo_ids=(80,)))
  write(root / 'ava-train_vidB_000150_4_9.pkl', released(range(98, 107), seed=5))
  return root


# ------------------------------------------------------------------------------------------------
# Reading


def test_load_dir_groups_videos_and_converts_fields(folder):
  videos = tl.load_dir(folder, appearance_dim=DA, progress=False)
  ids = [[(t.video_id, t.track_id, len(t)) for t in v] for v in videos]
  assert ids == [[('ava-train_vidB_000150', '3', 6), ('ava-train_vidB_000150', '4', 9)],
                 [('vidA', '0', 20), ('vidA', '1', 12), ('vidA', '2', 5)]]
  a0 = videos[1][0]
  raw = released(range(0, 20), seed=1)
  np.testing.assert_array_equal(a0.frame_ids, np.arange(20))
  np.testing.assert_allclose(a0.pose, raw['pose_shape'][:, 0])
  np.testing.assert_allclose(a0.appearance[3], raw['apperance_dict'][3][0], rtol=1e-6)
  np.testing.assert_allclose(a0.bbox[0], [64, 48, 96, 144])  # x, y, w, h -> x1, y1, x2, y2
  np.testing.assert_allclose(a0.frame_size[0], [480, 640])
  assert a0.frame_names[2] == 'f000002.jpg' and a0.extras['3d_joints'].shape == (20, 1, 45, 3)
  assert np.all(a0.label_level == 2) and np.all(a0.labels80[:, 11] == 1)
  assert a0.labels80.sum() == 20
  b3 = videos[0][0]  # pseudo labels come from action_label_psudo through apperance_index
  assert np.all(b3.label_level == 1) and np.all(b3.labels80[:, 79] == 1)


def test_save_load_roundtrip(tmp_path):
  d = released(range(3, 13), det=[1, 1, 0, 1, 1, 1, 0, 1, 1, 1], has_gt=[2, 1, 0] * 3 + [1],
               gt_ids=(5,), pseudo_ids=(7,))
  tr = tracklet(d, '7', 'clip')
  path = tmp_path / 'out' / 'clip_7_10.pkl'
  tl.save_tracklet(path, tr)
  assert not [p for p in os.listdir(path.parent) if p.endswith('.tmp')]
  back = tl.load_tracklet(path)
  assert (back.video_id, back.track_id) == ('clip', '7')
  for f in ('frame_ids', 'pose', 'detected', 'labels80', 'label_level', 'bbox', 'frame_size',
            'confidence'):
    np.testing.assert_allclose(getattr(back, f), getattr(tr, f), rtol=1e-6, err_msg=f)
  np.testing.assert_allclose(back.appearance[tr.detected], tr.appearance[tr.detected], rtol=1e-6)
  assert back.frame_names == tr.frame_names


# ------------------------------------------------------------------------------------------------
# Bad input


def test_missing_key_and_wrong_sizes_name_file_and_field(tmp_path):
  d = released(range(5))
  del d['pose_shape']
  p = write(tmp_path / 'v' / 'nopose.pkl', d)
  with pytest.raises(ValueError, match=r'nopose\.pkl: missing required key pose_shape'):
    tl.load_tracklet(p)
  d = released(range(5))
  d['pose_shape'] = d['pose_shape'][..., :200]
  p = write(tmp_path / 'v' / 'short_pose.pkl', d)
  with pytest.raises(ValueError, match=r'short_pose\.pkl: field pose_shape .*200.*expected 229'):
    tl.load_tracklet(p)
  p = write(tmp_path / 'w' / 'appe.pkl', released(range(5), appe_dim=6))
  with pytest.raises(ValueError, match=r'appe\.pkl: field apperance_dict has 6-d features, '
                     r'expected data\.appearance_dim = 4'):
    tl.load_dir(tmp_path / 'w', appearance_dim=4, progress=False)
  d = released(range(5))
  del d['apperance_dict'], d['apperance_index']
  p = write(tmp_path / 'x' / 'noappe.pkl', d)
  with pytest.raises(ValueError, match=r'noappe\.pkl: field apperance_dict .*expected 4'):
    tl.load_tracklet(p, appearance_dim=4)
  assert tl.load_tracklet(p, appearance_dim=0).appearance is None  # pose-only is fine
  d = released([0, 2, 1])
  p = write(tmp_path / 'x' / 'order.pkl', d)
  with pytest.raises(ValueError, match=r'order\.pkl: key fid must be strictly increasing'):
    tl.load_tracklet(p)
  d = released(range(5))
  d['frame_bbox'] = d['frame_bbox'][:4]
  p = write(tmp_path / 'x' / 'len.pkl', d)
  with pytest.raises(ValueError, match=r'len\.pkl: key frame_bbox has 4 frames but fid has 5'):
    tl.load_tracklet(p)


def test_empty_unlabeled_and_non_finite_are_counted(tmp_path, caplog):
  root = tmp_path / 'd'
  write(root / 'v' / 'good.pkl', released(range(6), has_gt=[2] * 6, gt_ids=(1,)))
  write(root / 'v' / 'empty.pkl', released(range(6), det=np.zeros(6)))
  nolabel = released(range(6))
  del nolabel['action_label_gt'], nolabel['has_gt']
  write(root / 'v' / 'nolabel.pkl', nolabel)
  bad = released(range(6))
  bad['pose_shape'][2, 0, 5] = np.nan
  bad['apperance_dict'][4][0, 1] = np.inf
  write(root / 'v' / 'nan.pkl', bad)
  with caplog.at_level(logging.WARNING, logger='lart_jax.tracklets'):
    videos = tl.load_dir(root, appearance_dim=DA, progress=False)
  text = caplog.text
  assert 'skipped 1 of 4 tracklets with no detection' in text
  assert '1 of 4 tracklets have no label keys' in text
  assert 'dropped 2 detections with NaN or Inf' in text
  tracks = {t.track_id: t for t in videos[0]}
  assert sorted(tracks) == ['good', 'nan', 'nolabel']
  assert np.all(tracks['nolabel'].label_level == 0) and tracks['nolabel'].labels80.sum() == 0
  np.testing.assert_array_equal(tracks['nan'].detected, [1, 1, 0, 1, 0, 1])
  assert np.all(np.isfinite(tracks['nan'].pose)) and np.all(np.isfinite(tracks['nan'].appearance))
  with pytest.raises(ValueError, match=r'nolabel\.pkl: missing label key action_label_gt '
                     r'\(data\.require_labels'):
    tl.load_dir(root, require_labels=True, progress=False)
  # the same checks hold through the config, before any batch is made
  with pytest.raises(ValueError, match=r'nolabel\.pkl: missing label key'):
    lart_data.build_train_dataset(cfg(input=str(root), require_labels=True), seed=0,
                                  process_index=0, process_count=1, batch_size=2)
  empty_root = tmp_path / 'e'
  write(empty_root / 'v' / 'a.pkl', released(range(3), det=np.zeros(3)))
  with pytest.raises(ValueError, match='none of the 1 tracklets .* has a detection'):
    tl.load_dir(empty_root, progress=False)


def test_config_errors_name_the_field(tmp_path):
  with pytest.raises(ValueError, match=r'data\.max_frames must be an int in \[1, 128\]'):
    lart_data.validate_data_config(cfg(max_frames=129))
  with pytest.raises(ValueError, match=r'data\.num_classes must be 60'):
    lart_data.validate_data_config(cfg(num_classes=50))
  with pytest.raises(ValueError, match=r'data\.input: directory .* does not exist'):
    lart_data.validate_data_config(cfg(input=str(tmp_path / 'missing')))
  with pytest.raises(ValueError, match=r"data\.context must be one of \('random', 'nearest'\)"):
    lart_data.validate_data_config(cfg(context='closest'))


# ------------------------------------------------------------------------------------------------
# Examples


def test_example_fields_shapes_and_dtypes(folder):
  c = cfg(input=str(folder))
  spec = lart_data.examples_spec(c)
  train = next(iter(lart_data.build_train_dataset(c, seed=0, process_index=0, process_count=1,
                                                  batch_size=2)))
  evals = lart_data.build_eval_examples(c, process_index=0, process_count=1, batch_size=2,
                                        num_batches=3)
  assert len(evals) == 3
  for batch in (train, *evals):
    assert set(batch) == set(spec)
    for k, (shape, dtype) in spec.items():
      assert batch[k].shape == (2, *shape) and batch[k].dtype == dtype, k
  assert spec['pose'][0] == (8, 3, 229) and spec['labels'][0] == (8, 60)
  ds = lart_data.load_dataset(c, 'eval')
  for b in evals:  # indices point back into the dataset
    for v, t, fids in zip(b['video_index'], b['track_index'], b['frame_ids']):
      assert ds.track_video[t] == v and ds.tracks[t].video_id == ds.video_ids[v]
      assert set(fids[fids >= 0]) <= set(ds.tracks[t].frame_ids)
  pose_only = lart_data.build_eval_examples(cfg(input=str(folder), appearance_dim=0),
                                            process_index=0, process_count=1, batch_size=1,
                                            num_batches=1)[0]
  assert pose_only['appearance'].shape == (1, 8, 3, 0)


def test_context_aligned_by_frame_id():
  a = tracklet(released(range(10, 20), seed=1), 'A')
  b = tracklet(released(range(13, 25), seed=2, det=[1, 1, 0] + [1] * 9), 'B')
  ds = lart_data.LartDataset([[a, b]])
  ex = lart_data.make_example(ds, 0, 0, **kw(num_people=2, max_frames=10))
  np.testing.assert_array_equal(ex['frame_ids'], np.arange(10, 20))
  np.testing.assert_array_equal(ex['detected'][:, 1], [0, 0, 0, 1, 1, 0, 1, 1, 1, 1])
  np.testing.assert_allclose(ex['pose'][3, 1], b.pose[0])  # frame 13 = B's first frame
  np.testing.assert_allclose(ex['pose'][9, 1], b.pose[6])
  np.testing.assert_allclose(ex['appearance'][4, 1], b.appearance[1])
  assert not ex['pose'][:3, 1].any() and not ex['pose'][5, 1].any()
  np.testing.assert_allclose(ex['pose'][:, 0], a.pose)
  # from B's side: its frame 13..20 line up with A's positions 3..9
  ex_b = lart_data.make_example(ds, 1, 0, **kw(num_people=2, max_frames=10))
  np.testing.assert_array_equal(ex_b['detected'][:, 1], [1] * 7 + [0] * 3)
  np.testing.assert_allclose(ex_b['pose'][0, 1], a.pose[3])


def test_short_tracklet_is_padded():
  d = released(range(40, 45), has_gt=[2, 2, 1, 0, 0], gt_ids=(1,), pseudo_ids=(3,))
  ds = lart_data.LartDataset([[tracklet(d)]])
  ex = lart_data.make_example(ds, 0, 0, **kw())
  np.testing.assert_array_equal(ex['valid'], [1] * 5 + [0] * 3)
  np.testing.assert_array_equal(ex['frame_ids'], [40, 41, 42, 43, 44, -1, -1, -1])
  np.testing.assert_array_equal(ex['label_level'], [2, 2, 1, 0, 0, 0, 0, 0])
  assert not ex['detected'][5:].any() and not ex['pose'][5:].any() and not ex['bbox'][5:].any()
  np.testing.assert_allclose(ex['bbox'][0], [64 / 640, 48 / 480, 96 / 640, 144 / 480])


def test_label_mapping_to_evaluated_classes():
  # id 1 (evaluated, column 0), id 2 (crawl: not evaluated), id 80 (column 59)
  d = released(range(4), has_gt=[2, 2, 0, 1], gt_ids=(1, 2, 80), pseudo_ids=(14,))
  ds = lart_data.LartDataset([[tracklet(d)]])
  ex = lart_data.make_example(ds, 0, 0, **kw(max_frames=4))
  labels = ex['labels']
  assert labels.shape == (4, 60) and len(ava.EVALUATED_IDS) == 60
  np.testing.assert_array_equal(np.nonzero(labels[0])[0], [0, 59])
  assert not labels[2].any()  # level 0: no label
  assert labels[3, ava.EVALUATED_IDS.index(14)] == 1 and labels[3].sum() == 1
  ex80 = lart_data.make_example(ds, 0, 0, **kw(max_frames=4, num_classes=80))
  np.testing.assert_array_equal(np.nonzero(ex80['labels'][0])[0], [0, 1, 79])


def test_context_selection_nearest_or_random_among_present():
  poi = tracklet(released(range(10), seed=0, location=[0, 0, 5]), 'poi')
  others = [tracklet(released(range(10), seed=i + 1, location=[float(x), 0, 5]), f'o{i}')
            for i, x in enumerate([4.0, 1.0, 3.0, 2.0])]
  absent = tracklet(released(range(50, 60), seed=9, location=[0.1, 0, 5]), 'absent')
  ds = lart_data.LartDataset([[poi, *others, absent]])
  ex = lart_data.make_example(ds, 0, 0, **kw(max_frames=10))
  # nearest two: x = 1 (track 2) then x = 2 (track 4)
  np.testing.assert_allclose(ex['pose'][0, 1], ds.tracks[2].pose[0])
  np.testing.assert_allclose(ex['pose'][0, 2], ds.tracks[4].pose[0])
  chosen = set()
  for s in range(40):
    ex = lart_data.make_example(ds, 0, 0, rng=np.random.default_rng(s), context='random',
                                **kw(max_frames=10))
    picks = set()
    for slot in (1, 2):
      match = [i for i in range(1, 6) if np.allclose(ex['pose'][0, slot], ds.tracks[i].pose[0])]
      assert len(match) == 1 and match[0] != 5  # never the track outside the window
      picks.add(match[0])
    assert len(picks) == 2
    chosen |= picks
  assert chosen == {1, 2, 3, 4}
  one = lart_data.make_example(ds, 0, 0, **kw(max_frames=10, num_people=1))
  assert one['pose'].shape == (10, 1, 229)
  # data.context = 'nearest': training takes the evaluation's choice and order whatever the rng.
  want = lart_data.make_example(ds, 0, 0, **kw(max_frames=10))
  for s in range(5):
    got = lart_data.make_example(ds, 0, 0, rng=np.random.default_rng(s), context='nearest',
                                 **kw(max_frames=10))
    np.testing.assert_array_equal(got['pose'], want['pose'])


# ------------------------------------------------------------------------------------------------
# Pipelines


EPOCH = [0, 1, 1, 2, 2, 2, 3, 3, 4]  # track index per training example of the folder


def _keys(batches) -> list[tuple]:
  return [(int(v), int(t), int(f)) for b in batches
          for v, t, f in zip(b['video_index'], b['track_index'], b['frame_ids'][:, 0])]


def test_train_shuffle_is_deterministic_and_changes_per_epoch(folder):
  c = cfg(input=str(folder))
  # tracks of 6, 9, 20, 12, 5 frames: ceil(length / 8) windows each
  assert lart_data.num_train_examples(c) == 9

  def take(seed, n):
    it = iter(lart_data.build_train_dataset(c, seed=seed, process_index=0, process_count=1,
                                            batch_size=1))
    return [next(it) for _ in range(n)]

  a, b = take(3, 27), take(3, 27)
  assert _keys(a) == _keys(b)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  tracks = [[k[1] for k in _keys(a[i:i + 9])] for i in (0, 9, 18)]
  assert all(sorted(t) == EPOCH for t in tracks)  # each epoch: every example once
  assert len({tuple(t) for t in tracks}) > 1  # the order changes with the epoch
  assert _keys(take(4, 9)) != _keys(a[:9])
  # random starts: the long track (frames 0..19) is seen from more than one start
  starts = {k[2] for k in _keys(a) if k[1] == 2}
  assert len(starts) > 1 and all(0 <= s <= 12 for s in starts)


def test_train_sharding_disjoint_complete_and_resumable(folder):
  c = cfg(input=str(folder))
  seen = []
  for p in range(2):
    it = iter(lart_data.build_train_dataset(c, seed=0, process_index=p, process_count=2,
                                            batch_size=1))
    seen.append(sorted(k[1] for k in _keys([next(it) for _ in range(5 - p)])))
  assert sorted(seen[0] + seen[1]) == EPOCH
  it = iter(lart_data.build_train_dataset(c, seed=0, process_index=0, process_count=1,
                                          batch_size=2))
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  again = iter(lart_data.build_train_dataset(c, seed=0, process_index=0, process_count=1,
                                             batch_size=2))
  again.set_state(state)
  for x, y in zip(want, [next(again) for _ in range(2)]):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  with pytest.raises(ValueError, match='process_count=10'):
    lart_data.build_train_dataset(c, seed=0, process_index=9, process_count=10, batch_size=1)


def test_inference_windows_cover_every_frame_once_and_eval_shards(folder):
  c = cfg(input=str(folder))
  ds = lart_data.load_dataset(c, 'eval')
  windows = lart_data.inference_windows(ds, 8)
  covered = {}
  for v, t, s in windows:
    ex = lart_data.make_example(ds, int(t), int(s), **kw())
    for f in ex['frame_ids'][ex['valid']]:
      covered[(int(t), int(f))] = covered.get((int(t), int(f)), 0) + 1
  want = {(i, int(f)) for i, tr in enumerate(ds.tracks) for f in tr.frame_ids}
  assert set(covered) == want and set(covered.values()) == {1}
  assert len(windows) == 9
  per = [lart_data.build_eval_examples(c, process_index=p, process_count=2, batch_size=1,
                                       num_batches=5) for p in range(2)]
  keys = [_keys(b) for b in per]
  assert len(set(keys[0])) == 5 and len(set(keys[1])) == 4  # process 1 cycles its 4 windows
  assert keys[1][4] == keys[1][0] and not set(keys[0]) & set(keys[1])
  assert set(keys[0]) | set(keys[1]) == {(int(v), int(t), int(ds.tracks[t].frame_ids[s]))
                                         for v, t, s in windows}
  assert _keys(per[0]) == _keys(lart_data.build_eval_examples(
      c, process_index=0, process_count=2, batch_size=1, num_batches=5))


# ------------------------------------------------------------------------------------------------
# Synthetic tracklets (lart_jax.synthetic)


def test_reads_the_synthetic_generator_output(tmp_path):
  from lart_jax import synthetic
  for key in synthetic.TRACK_KEYS:  # the generator's keys are the reader's
    assert key in tl.REQUIRED_KEYS + tl.LABEL_KEYS + tl.EXTRA_KEYS + (
        tl.APPEARANCE_DENSE, 'frame_name', 'frame_conf'), key
  small = synthetic.SyntheticConfig(frames=(60, 70), people=(2, 4), appearance_dim=8)
  synthetic.write_dataset(str(tmp_path), small, 2, seed=5, split='train')
  videos = tl.load_dir(tmp_path / 'train', appearance_dim=8, progress=False)
  raw = synthetic.make_videos(small, 2, seed=5)
  assert [v[0].video_id for v in videos] == ['train00000', 'train00001']
  assert [len(v) for v in videos] == [len(v) for v in raw]
  for v, rv in zip(videos, raw):
    for tr, d in zip(v, sorted(rv, key=lambda d: int(d['track_id']))):
      assert tr.track_id == d['track_id']
      np.testing.assert_array_equal(tr.detected, d['has_detection'][:, 0])
      np.testing.assert_array_equal(tr.label_level, d['has_gt'][:, 0])
      np.testing.assert_allclose(tr.appearance, d['apperance_emb'][:, 0], rtol=1e-6)
      lab = tr.label_level > 0
      np.testing.assert_allclose(tr.labels80[lab], d['action_label_gt'][lab, 0])
  # data.input = '': generated in memory; eval videos differ from the training ones
  c = cfg(appearance_dim=8, synthetic_videos=3, synthetic_eval_videos=2, synthetic_seed=1,
          synthetic={'frames': (60, 70), 'people': (2, 4)})
  batch = next(iter(lart_data.build_train_dataset(c, seed=0, process_index=0, process_count=1,
                                                  batch_size=2)))
  assert batch['pose'].shape == (2, 8, 3, 229) and batch['appearance'].shape == (2, 8, 3, 8)
  train, held = lart_data.load_dataset(c, 'train'), lart_data.load_dataset(c, 'eval')
  assert held.num_videos == 2 and not np.allclose(held.tracks[0].pose[:5], train.tracks[0].pose[:5])
  with pytest.raises(ValueError, match=r'data\.synthetic\.appearance_dim = 16 but '
                     r'data\.appearance_dim = 8'):
    lart_data.validate_data_config(cfg(appearance_dim=8, synthetic={'appearance_dim': 16}))
  with pytest.raises(ValueError, match=r'data\.synthetic\.bogus is not a field'):
    lart_data.validate_data_config(cfg(synthetic={'bogus': 1}))


# ------------------------------------------------------------------------------------------------
# Tracker output


def test_tracklets_from_a_tiny_tracker_run(tmp_path):
  from phalp_jax import io as phalp_io
  from phalp_jax import synthetic as scenes
  from phalp_jax import tracker
  scene = scenes.make_scene(scenes.get_config('easy', num_frames=16, pose_dim=229), seed=(0, 0))
  fields = {k: scene[k] for k in ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca', 'gt_id')}
  dets = phalp_io.Detections(**fields, image_size=tuple(scene['image_size']),
                             num_frames=len(scene['shot']), source='scene0')
  rows = tracker.track_video(dets)
  assert len(rows)
  out = tl.tracklets_from_tracker(rows, dets, video_id='scene0')
  assert [t.track_id for t in out] == [str(i) for i in np.unique(rows[:, 1]).astype(int)]
  total = 0
  for tr in out:
    r = rows[rows[:, 1] == int(tr.track_id)]
    total += tr.num_detections
    assert tr.frame_ids[0] == r[:, 0].min() and tr.frame_ids[-1] == r[:, 0].max()
    assert np.all(np.diff(tr.frame_ids) == 1) and tr.appearance_dim == dets.appe.shape[1]
    assert np.all(tr.label_level == 0) and tr.frame_names[0].startswith('scene0/')
    row = r[0]
    i = np.flatnonzero((dets.frame == row[0]) & np.all(dets.bbox == row[2:6], axis=1))[0]
    p = int(row[0]) - tr.frame_ids[0]
    np.testing.assert_allclose(tr.pose[p], dets.pose[i], rtol=1e-6)
    np.testing.assert_allclose(tr.bbox[p], [*row[2:4], *(row[2:4] + row[4:6])], rtol=1e-6)
  assert total == len(rows)
  # through the tracker's pickle (launch.track --store_features layout)
  feats = {'appe': [], 'pose': [], 'loca': []}
  for row in rows:
    i = np.flatnonzero((dets.frame == row[0]) & np.all(dets.bbox == row[2:6], axis=1))[0]
    for k in feats:
      feats[k].append(getattr(dets, k)[i])
  path = tmp_path / 'scene0.pkl'
  phalp_io.save_phalp_pickle(rows, path, video='scene0', num_frames=dets.num_frames,
                             image_size=dets.image_size, features=feats)
  back = tl.tracklets_from_tracker_pickle(path)
  assert [len(t) for t in back] == [len(t) for t in out]
  for x, y in zip(back, out):
    np.testing.assert_allclose(x.pose, y.pose, rtol=1e-6)
    np.testing.assert_array_equal(x.detected, y.detected)
  ds = lart_data.LartDataset([out])
  ex = lart_data.make_example(ds, 0, 0, **kw(appearance_dim=dets.appe.shape[1]))
  assert ex['detected'][:, 0].any()
  small = phalp_io.Detections(**{**fields, 'pose': scene['pose'][:, :24]},
                              image_size=tuple(scene['image_size']), source='scene0-24')
  with pytest.raises(ValueError, match=r'scene0-24: field pose has 24-d .*expected 229'):
    tl.tracklets_from_tracker(rows, small, video_id='scene0')
