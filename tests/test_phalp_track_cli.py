"""``launch.track`` (the PHALP command) and ``phalp_jax.render``: outputs, failures, metrics, the
released pickle, renders, parameters from a config / fit JSON, and the synthetic benchmark.

The command runs in-process: its absl flags are parsed into a fresh ``FlagValues`` per call.
Scenes are 'easy' and 40 frames long, so the compiled tracker is small (about 3 compiles).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import ml_collections
import numpy as np
import pytest
from absl import flags

from launch import track
from phalp_jax import io as io_lib
from phalp_jax import render, synthetic
from phalp_jax.state import PhalpParams
from phalp_jax.tracker import shot_index
from tokenizers_jax.video import probe_video, write_video

FRAMES = 40


def _run(argv: list[str]) -> int:
  argv = ['track', *argv, '--noprogress']
  fv = flags.FlagValues()
  track.define_flags(fv, argv)
  fv(argv)
  return track.run_flags(fv)


def _scene(seed: int) -> dict:
  return synthetic.make_scene(synthetic.get_config('easy', num_frames=FRAMES), seed=(seed, 0))


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('dets')
  for i in range(2):
    synthetic.save_scene_npz(_scene(i), str(root / f'v{i}.npz'))
  (root / 'broken.npz').write_bytes(b'PK\x03\x04 this is not a zip archive')
  return root


@pytest.fixture(scope='module')
def tracked(folder, tmp_path_factory):
  out = tmp_path_factory.mktemp('out')
  code = _run(['--input', str(folder), '--output', str(out), '--render', '--store_features'])
  with open(out / track.SUMMARY) as f:
    return code, out, json.load(f)


def test_folder_outputs_failures_and_metrics(tracked, capsys):
  code, out, summary = tracked
  assert code == 0
  assert summary['inputs'] == 3 and summary['tracked'] == 2 and summary['failed'] == 1
  assert summary['failures'][0]['input'].endswith('broken.npz')
  assert summary['failures'][0]['error']  # e.g. 'BadZipFile: File is not a zip file'
  names = sorted(v['name'] for v in summary['videos'])
  assert names == ['v0', 'v1']
  for v in summary['videos']:
    assert v['ground_truth'] == 'gt_id' and v['frames'] == FRAMES
    assert set(v['metrics']) == set(track.METRIC_KEYS)
    assert all(math.isfinite(v['metrics'][k]) for k in track.METRIC_KEYS)
    assert v['metrics']['idf1'] > 0.5
    for key in ('mot', 'pickle', 'render'):
      assert (out / v[key]).is_file()
  assert set(summary['aggregate']) == set(track.METRIC_KEYS)
  assert summary['params'] == dataclasses.asdict(PhalpParams())


def test_mot_text_and_pickle_hold_the_same_tracks(tracked, folder):
  _, out, summary = tracked
  for v in summary['videos']:
    rows = io_lib.load_mot_tracks(out / v['mot'])
    assert len(rows) == v['rows'] > 0 and len(np.unique(rows[:, 1])) == v['tracks']
    got = io_lib.load_phalp_pickle(out / v['pickle'])
    a = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    b = got.tracks[np.lexsort((got.tracks[:, 1], got.tracks[:, 0]))]
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-3)
    # --store_features: the rows' own features come back, so the pickle is a tracker input again.
    dets = io_lib.load_npz(folder / f"{v['name']}.npz")
    assert got.detections.appe.shape[1] == dets.appe.shape[1]
    assert got.detections.num_frames == FRAMES


def test_render_of_a_blank_canvas_has_every_frame(tracked):
  _, out, summary = tracked
  info = probe_video(str(out / summary['videos'][0]['render']))
  assert info.frames == FRAMES and (info.height, info.width) == (360, 640)


def test_frames_video_gives_shots_and_the_render_background(tmp_path):
  scene = _scene(5)
  d = io_lib.Detections(frame=scene['frame'], bbox=scene['bbox'], conf=scene['conf'],
                        appe=scene['appe'], pose=scene['pose'], loca=scene['loca'],
                        gt_id=scene['gt_id'], image_size=tuple(scene['image_size']),
                        num_frames=FRAMES, source='scene')
  io_lib.save_npz(d, tmp_path / 'clip.npz')  # no shot field
  frames = np.zeros((FRAMES, 64, 96, 3), np.uint8)
  frames[:20, ..., 0] = 200
  frames[20:, ..., 2] = 200
  video = write_video(str(tmp_path / 'clip.mp4'), frames, 10.0)
  out = tmp_path / 'out'
  code = _run(['--input', str(tmp_path / 'clip.npz'), '--output', str(out), '--frames', video,
               '--render', '--render_width', '320'])
  assert code == 0
  with open(out / track.SUMMARY) as f:
    v = json.load(f)['videos'][0]
  assert v['shots'] == 2
  shots = io_lib.load_phalp_pickle(out / 'clip.pkl').detections.shot
  np.testing.assert_array_equal(shot_index(shots, FRAMES), [0] * 20 + [1] * 20)
  info = probe_video(str(out / 'clip.mp4'))
  assert info.frames == FRAMES and info.width == 320


def test_missing_input_exits_2_naming_it(tmp_path, capsys):
  assert _run(['--input', str(tmp_path / 'nowhere'), '--output', str(tmp_path / 'o')]) == 2
  err = capsys.readouterr().err
  assert 'nowhere' in err and 'does not exist' in err


def test_different_feature_sizes_fail_when_asked(tmp_path, folder, capsys):
  os.symlink(folder / 'v0.npz', tmp_path / 'a.npz')
  rows = np.array([[0, -1, 10, 10, 20, 40, 0.9], [1, -1, 11, 10, 20, 40, 0.9]])
  io_lib.save_mot(rows, tmp_path / 'b.txt')
  code = _run(['--input', str(tmp_path), '--output', str(tmp_path / 'o'),
               '--mixed_sizes', 'fail'])
  assert code == 2
  err = capsys.readouterr().err
  assert 'feature sizes differ' in err and 'field appe' in err and 'b.txt' in err


def test_settings_from_config_block_and_fit_json(tmp_path):
  config = ml_collections.ConfigDict({'tracker': {'max_age': 10, 'lmc': False, 'beta_a': 2.0,
                                                  'capacity': 8}})
  s = track.settings_from(config)
  assert (s.params.max_age, s.params.lmc, s.params.beta_a, s.capacity) == (10, False, 2.0, 8)
  path = tmp_path / 'params.json'
  path.write_text(json.dumps({'vector': [1.0, 2.0, 3.0, 4.0, 50.0],
                              'other_params': {'n_init': 3}}))
  s = track.settings_from(config, str(path))
  assert s.params.to_vector().tolist() == [1.0, 2.0, 3.0, 4.0, 50.0]
  assert (s.params.n_init, s.params.max_age, s.params.lmc) == (3, 10, False)
  with pytest.raises(track.UsageError, match='tracker.bogus'):
    track.settings_from(ml_collections.ConfigDict({'tracker': {'bogus': 1}}))
  with pytest.raises(track.UsageError, match='max_age'):
    track.settings_from(ml_collections.ConfigDict({'tracker': {'max_age': 0}}))


def test_render_colours_are_stable_and_frames_are_drawn(tmp_path):
  assert render.id_colour(7) == render.id_colour(7) and render.id_colour(1) != render.id_colour(2)
  assert render.output_size((719, 1281)) == (360, 640)
  frames = np.full((5, 100, 200, 3), 255, np.uint8)
  rows = np.array([[2, 3, 20, 20, 40, 60, 1.0]])
  path = render.render_tracks(rows, frames, (100, 200), str(tmp_path / 'r.mp4'), 5.0)
  assert probe_video(path).frames == 5
  canvas = np.full((100, 200, 3), 255, np.uint8)
  render.draw_frame(canvas, rows, (1.0, 1.0))
  assert tuple(canvas[50, 20]) != (255, 255, 255)  # the box's left edge


def test_benchmark_rows_for_every_method():
  records = track.benchmark(['easy'], videos=1, num_frames=FRAMES)
  assert [r['method'] for r in records] == list(track.METHODS)
  for r in records:
    assert all(math.isfinite(r[k]) for k in ('mota', 'idf1', 'hota', 'frames_per_second'))
    assert r['frames'] == FRAMES and r['num_switches'] >= 0
  table = track.format_table(records, 'easy')
  assert table.count('\n|') == len(track.METHODS) + 2  # + header and rule


def test_bad_input_end_to_end_keeps_every_person(tmp_path, capsys, caplog):
  """One file with every bad input the tracker must survive: 300 frames without a detection in
  the middle, a repeated frame, frames out of order, a NaN feature, a zero-size box. The command
  finishes, says what it dropped, and every person is tracked on both sides of the gap."""
  import logging
  scene = _scene(7)
  gap = 300
  fields = {k: np.asarray(scene[k]) for k in synthetic.CANONICAL_KEYS}
  frame = fields['frame'].copy()
  frame[frame >= FRAMES // 2] += gap
  fields['frame'] = frame
  fields['shot'] = np.zeros(FRAMES + gap, np.int64)
  rows = np.arange(len(frame))
  repeat = rows[frame == 3]                       # frame 3 delivered twice
  order = np.concatenate([rows[::-1], repeat])    # and everything out of order
  for key in ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca', 'gt_id'):
    fields[key] = fields[key][order]
  fields['appe'] = fields['appe'].astype(np.float32)
  bad_nan, bad_box = 0, 1
  fields['appe'][bad_nan, 0] = np.nan
  fields['bbox'] = fields['bbox'].astype(np.float64)
  fields['bbox'][bad_box, 2] = 0.0
  np.savez(tmp_path / 'messy.npz', **fields)

  out = tmp_path / 'out'
  with caplog.at_level(logging.WARNING):
    assert _run(['--input', str(tmp_path / 'messy.npz'), '--output', str(out)]) == 0
  said = ' '.join(r.getMessage() for r in caplog.records) + capsys.readouterr().err
  for message in ('NaN or Inf', 'zero or negative box', 'not in frame order', 'repeating another',
                  f'{gap} frames without any detection'):
    assert message in said, message

  tracks = io_lib.load_mot_tracks(out / 'messy.txt')
  gt = np.asarray(scene['gt_tracks'], np.float64)[:, :6]
  gt[gt[:, 0] >= FRAMES // 2, 0] += gap
  for half in (gt[:, 0] < FRAMES // 2, gt[:, 0] >= FRAMES // 2):
    before = gt[half]
    pred = tracks[(tracks[:, 0] >= before[:, 0].min()) & (tracks[:, 0] <= before[:, 0].max())]
    m = track.aggregate_metrics([before], [pred])
    # Nobody is lost on either side of the gap: the only misses are each person's first n_init
    # frames, before a new track is confirmed (the gap outlasts max_age, so identities restart),
    # and the 2 detections dropped as bad.
    people = len(np.unique(before[:, 1]))
    assert m['num_misses'] <= people * PhalpParams().n_init + 2 + 2, m
    assert m['num_switches'] == 0 and m['num_false_positives'] <= 2, m
  # No track reports a frame inside the gap.
  assert not np.any((tracks[:, 0] >= FRAMES // 2) & (tracks[:, 0] < FRAMES // 2 + gap))
