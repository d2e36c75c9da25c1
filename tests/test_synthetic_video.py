"""The synthetic labelled video set (tokenizers_jax.synthetic_video)."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest

from tokenizers_jax import synthetic_video as S
from tokenizers_jax import video as V

KW = dict(frames=16, height=48, width=64)


def test_deterministic_and_shaped():
  a, info_a = S.make_video(3, 5, **KW)
  b, info_b = S.make_video(3, 5, **KW)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(info_a['mask'], info_b['mask'])
  assert a.shape == (16, 48, 64, 3) and a.dtype == np.uint8
  assert info_a['mask'].shape == (16, 48, 64) and info_a['centres'].shape == (16, 2)
  assert not np.array_equal(a, S.make_video(3, 6, **KW)[0])
  assert not np.array_equal(a, S.make_video(4, 5, **KW)[0])
  labels = S.video_labels(3, 5, **KW)  # the same labels without rendering
  assert {k: info_a[k] for k in labels} == labels
  assert a.std() > 20  # textured, not flat


def test_labels_cover_classes_and_directions():
  infos = [S.video_labels(0, i, **KW) for i in range(200)]
  assert {i['label'] for i in infos} == set(range(S.NUM_CLASSES))
  assert {i['direction'] for i in infos} == set(range(S.NUM_DIRECTIONS))
  for info in infos:
    assert S.CLASS_NAMES[info['label']] == info['class_name']
    assert S.DIRECTION_NAMES[info['direction']] == info['direction_name']
    assert 1 <= len(info['distractors']) <= 3 and info['class_name'] not in info['distractors']
    assert sorted(info['depth_order']) == list(range(len(info['distractors']) + 1))
    assert max(info['distractor_radii']) < info['radius']  # the main sprite is the largest
  # Texture (like colour) only hints at the class: the class's own texture most of the time.
  own = np.mean([i['texture'] == S.TEXTURES[i['label']] for i in infos])
  assert 0.55 < own < 0.9
  assert len({i['background'] for i in infos}) == len(S.BACKGROUNDS)
  assert sum(i['pan'] != (0.0, 0.0) for i in infos) > 50


def _circular_centroid(mask: np.ndarray) -> np.ndarray:
  """(y, x) mean of a mask on the torus (sprites wrap around the frame edges)."""
  ys, xs = np.nonzero(mask)
  out = []
  for coords, n in ((ys, mask.shape[0]), (xs, mask.shape[1])):
    ang = coords * 2 * np.pi / n
    out.append(math.atan2(np.sin(ang).mean(), np.cos(ang).mean()) * n / (2 * np.pi) % n)
  return np.array(out)


def _wrapped(d: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  n = np.array(shape, float)
  return (d + n / 2) % n - n / 2


def test_main_sprite_moves_in_labelled_direction():
  checked = 0
  for index in range(12):
    video, info = S.make_video(1, index, **KW)
    mask = info['mask']
    dy, dx = S.direction_vector(info['direction'])
    # The rendered centres follow the labelled velocity.
    steps = _wrapped(np.diff(info['centres'], axis=0), (48, 64))
    np.testing.assert_allclose(steps.sum(0) / 15, info['velocity'], atol=0.1)
    # The visible pixels move that way too (frames where the sprite is mostly visible).
    area = mask.sum((1, 2))
    good = np.nonzero(area > 0.6 * area.max())[0]
    if len(good) < 2 or good[-1] - good[0] < 6:
      continue
    c0, c1 = _circular_centroid(mask[good[0]]), _circular_centroid(mask[good[-1]])
    move = _wrapped(c1 - c0, (48, 64))
    cos = (move[0] * dy + move[1] * dx) / (np.linalg.norm(move) + 1e-9)
    assert cos > 0.8, (index, info['direction_name'], move)
    assert np.linalg.norm(move) > 0.5 * info['speed'] * (good[-1] - good[0])
    checked += 1
  assert checked >= 6


def test_write_synthetic_videos_resumes(tmp_path):
  out = str(tmp_path / 'synth')
  kw = dict(frames=12, height=32, width=32, fps=8, seed=7)
  manifest = S.write_synthetic_videos(out, 5, split_name='val', progress=False, **kw)
  split = os.path.join(out, 'val')
  assert manifest == os.path.join(split, 'labels.csv')
  with open(manifest, newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['file'] for r in rows] == [f'{i:05d}.mp4' for i in range(5)]
  assert V.list_videos(out) == [os.path.join(split, r['file']) for r in rows]
  for i, row in enumerate(rows):
    video, info = S.make_video(7, i, frames=12, height=32, width=32)
    assert (int(row['label']), int(row['direction'])) == (info['label'], info['direction'])
    decoded = V.read_clip(os.path.join(split, row['file']), frames=12, stride=1, resolution=32)
    assert np.abs(decoded.astype(int) - video).mean() < 20  # the same video, up to mp4 loss
  labels = S.read_labels(out)
  assert sorted(labels) == [f'val/{i:05d}.mp4' for i in range(5)]
  assert labels['val/00002.mp4']['label'] == int(rows[2]['label'])
  assert S.read_labels(manifest)['00002.mp4'] == labels['val/00002.mp4']

  # A second call is a no-op; a missing video (interrupted run) is redone, leftovers removed.
  stamps = {n: os.stat(os.path.join(split, n)).st_mtime_ns for n in os.listdir(split)}
  assert S.write_synthetic_videos(out, 5, split_name='val', progress=False, **kw) == manifest
  assert {n: os.stat(os.path.join(split, n)).st_mtime_ns for n in os.listdir(split)} == stamps
  os.remove(os.path.join(split, '00003.mp4'))
  leftover = os.path.join(split, '.00003.mp4.99-abcdef12.tmp.mp4')
  open(leftover, 'wb').write(b'partial')
  S.write_synthetic_videos(out, 5, split_name='val', progress=False, **kw)
  assert not os.path.exists(leftover)
  assert V.probe_video(os.path.join(split, '00003.mp4')).frames == 12
  assert os.stat(os.path.join(split, '00001.mp4')).st_mtime_ns == stamps['00001.mp4']
  with pytest.raises(ValueError, match='another output directory'):
    S.write_synthetic_videos(out, 5, split_name='val', progress=False, **dict(kw, seed=8))


def test_command_line(tmp_path, capsys):
  S.main(['--output', str(tmp_path), '--train', '2', '--val', '1', '--frames', '4',
          '--height', '16', '--width', '16'])
  printed = capsys.readouterr().out.split()
  assert printed == [str(tmp_path / 'train' / 'labels.csv'), str(tmp_path / 'val' / 'labels.csv')]
  assert sorted(S.read_labels(str(tmp_path))) == ['train/00000.mp4', 'train/00001.mp4',
                                                  'val/00000.mp4']
