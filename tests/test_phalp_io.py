"""PHALP input/output: the canonical .npz, MOTChallenge text files, the released pickle."""

from __future__ import annotations

import logging
import pickle
import sys

import numpy as np
import pytest

from phalp_jax import io


def make_dets(n_frames: int = 4, per_frame: int = 2, da: int = 5, dp: int = 3, uv: bool = False,
              source: str = '<memory>') -> io.Detections:
  rng = np.random.default_rng(0)
  n = n_frames * per_frame
  frame = np.repeat(np.arange(n_frames), per_frame)
  bbox = np.concatenate([rng.uniform(0, 200, (n, 2)), rng.uniform(10, 80, (n, 2))], axis=1)
  return io.Detections(
      frame=frame, bbox=bbox, conf=rng.uniform(0.5, 1, n), appe=rng.normal(size=(n, da)),
      pose=rng.normal(size=(n, dp)), loca=io.location_from_boxes(bbox, 240),
      uv=rng.uniform(size=(n, 4, 6, 6)) if uv else None, gt_id=np.arange(n) % per_frame + 1,
      image_size=(240, 320), shot=(np.arange(n_frames) == 2).astype(int), source=source)


def assert_same(a: io.Detections, b: io.Detections) -> None:
  for name in ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca', 'uv', 'gt_id', 'shot'):
    x, y = getattr(a, name), getattr(b, name)
    assert (x is None) == (y is None), name
    if x is not None:
      np.testing.assert_array_equal(x, y, err_msg=name)
  assert a.image_size == b.image_size and a.num_frames == b.num_frames


def warnings_of(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.name == 'phalp_jax.io' and r.levelno == logging.WARNING]


def save_raw(path, **fields) -> None:
  np.savez(path, **fields)


def raw_fields(n: int = 3, da: int = 4) -> dict[str, np.ndarray]:
  bbox = np.tile([[10., 20., 30., 60.]], (n, 1))
  return {'frame': np.arange(n), 'bbox': bbox, 'conf': np.ones(n), 'appe': np.zeros((n, da)),
          'pose': np.zeros((n, 2)), 'loca': io.location_from_boxes(bbox, 100),
          'image_size': np.array([100, 200])}


# ------------------------------------------------------------------------------------------------
# canonical .npz


@pytest.mark.parametrize('optional', [False, True])
def test_npz_round_trip(tmp_path, caplog, optional):
  dets = make_dets(uv=optional)
  if not optional:
    dets = io.Detections(frame=dets.frame, bbox=dets.bbox, conf=dets.conf, appe=dets.appe,
                         pose=dets.pose, loca=dets.loca, image_size=dets.image_size)
  path = tmp_path / 'video.npz'
  io.save_npz(dets, path)
  back = io.load_npz(path)
  assert_same(dets, back)
  assert back.source == str(path) and not warnings_of(caplog)
  assert [p.name for p in tmp_path.iterdir()] == ['video.npz']  # no temporary file left over


def test_npz_keeps_trailing_empty_frames(tmp_path):
  dets = make_dets()
  dets = io.Detections(frame=dets.frame, bbox=dets.bbox, conf=dets.conf, appe=dets.appe,
                       pose=dets.pose, loca=dets.loca, image_size=dets.image_size, num_frames=9)
  io.save_npz(dets, tmp_path / 'v.npz')
  back = io.load_npz(tmp_path / 'v.npz')
  assert back.num_frames == 9
  frames = list(back.frames())
  assert [t for t, _ in frames] == list(range(9))
  assert [len(i) for _, i in frames] == [2, 2, 2, 2, 0, 0, 0, 0, 0]


def test_npz_errors_name_file_and_field(tmp_path):
  path = tmp_path / 'bad.npz'
  fields = raw_fields()
  del fields['pose']
  save_raw(path, **fields)
  with pytest.raises(ValueError, match=r'bad\.npz.*missing required field pose'):
    io.load_npz(path)

  save_raw(path, **{**raw_fields(), 'bbox': np.zeros((3, 4, 1))})
  with pytest.raises(ValueError, match=r'bad\.npz: field bbox must have 2 dimension'):
    io.load_npz(path)

  save_raw(path, **{**raw_fields(), 'conf': np.ones(2)})
  with pytest.raises(ValueError, match=r'bad\.npz: field conf has 2 rows but field frame has 3'):
    io.load_npz(path)

  save_raw(path, **{**raw_fields(), 'frame': np.array([0., 1.5, 2.])})
  with pytest.raises(ValueError, match=r'bad\.npz: field frame must hold integers'):
    io.load_npz(path)

  save_raw(path, **{**raw_fields(), 'loca': np.zeros((3, 2))})
  with pytest.raises(ValueError, match=r'bad\.npz: field loca must have shape \[N, 3\]'):
    io.load_npz(path)

  save_raw(path, **{**raw_fields(), 'shot': np.zeros(2), 'frame': np.array([0, 1, 2])})
  with pytest.raises(ValueError, match=r'bad\.npz: field num_frames is 2 but field frame reach'):
    io.load_npz(path)

  (tmp_path / 'junk.npz').write_text('not a zip')
  with pytest.raises(ValueError, match=r'junk\.npz'):
    io.load_npz(tmp_path / 'junk.npz')


def test_whole_number_float_frames_are_accepted(tmp_path):
  save_raw(tmp_path / 'f.npz', **{**raw_fields(), 'frame': np.array([0., 1., 2.])})
  assert io.load_npz(tmp_path / 'f.npz').frame.dtype == np.int64


def test_non_finite_rows_dropped_with_one_counted_warning(tmp_path, caplog):
  fields = raw_fields(n=6)
  fields['appe'][1, 2] = np.nan
  fields['loca'][3, 0] = np.inf
  fields['conf'][3] = np.nan  # the same row twice: counted once
  fields['frame'] = np.array([0, 0, 1, 1, 2, 2])
  fields['bbox'][:, 0] += np.arange(6)  # two people per frame, not one detection repeated
  save_raw(tmp_path / 'nan.npz', **fields)
  with caplog.at_level(logging.WARNING):
    dets = io.load_npz(tmp_path / 'nan.npz')
  assert len(dets) == 4
  np.testing.assert_array_equal(dets.frame, [0, 1, 2, 2])
  messages = warnings_of(caplog)
  assert len(messages) == 1
  assert 'nan.npz' in messages[0] and 'ignored 2 of 6 detections with NaN or Inf' in messages[0]


def test_empty_boxes_dropped_with_warning_and_frames_kept(tmp_path, caplog):
  fields = raw_fields(n=4)
  fields['bbox'][1, 2] = 0.
  fields['bbox'][3, 3] = -5.
  fields['loca'] = np.zeros((4, 3))
  save_raw(tmp_path / 'box.npz', **fields)
  with caplog.at_level(logging.WARNING):
    dets = io.load_npz(tmp_path / 'box.npz')
  np.testing.assert_array_equal(dets.frame, [0, 2])
  assert dets.num_frames == 4  # frames 1 and 3 are still there, without detections
  assert [len(i) for _, i in dets.frames()] == [1, 0, 1, 0]
  messages = warnings_of(caplog)
  assert len(messages) == 1
  assert 'ignored 2 of 4 detections with a zero or negative box' in messages[0]


def test_out_of_order_frames_sorted_and_repeats_kept(tmp_path, caplog):
  fields = raw_fields(n=5)
  fields['frame'] = np.array([3, 1, 3, 0, 1])
  fields['conf'] = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
  save_raw(tmp_path / 'order.npz', **fields)
  with caplog.at_level(logging.WARNING):
    dets = io.load_npz(tmp_path / 'order.npz')
  np.testing.assert_array_equal(dets.frame, [0, 1, 1, 3, 3])
  np.testing.assert_array_equal(dets.conf, [0.4, 0.2, 0.5, 0.1, 0.3])  # stable within a frame
  assert any('not in frame order' in m for m in warnings_of(caplog))


def test_repeated_frame_rows_dropped_with_a_warning(tmp_path, caplog):
  fields = raw_fields(n=4)
  fields['bbox'][:, 0] += np.arange(4)
  for key in ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca'):  # frame 1 delivered twice
    fields[key] = np.concatenate([fields[key], fields[key][1:2]])
  save_raw(tmp_path / 'rep.npz', **fields)
  with caplog.at_level(logging.WARNING):
    dets = io.load_npz(tmp_path / 'rep.npz')
  np.testing.assert_array_equal(dets.frame, [0, 1, 2, 3])
  assert any('ignored 1 of 5 detections repeating' in m for m in warnings_of(caplog))


def test_long_run_of_empty_frames_is_reported(tmp_path, caplog):
  fields = raw_fields(n=2)
  fields['frame'] = np.array([0, 400])
  save_raw(tmp_path / 'gap.npz', **fields)
  with caplog.at_level(logging.WARNING):
    dets = io.load_npz(tmp_path / 'gap.npz')
  assert len(dets) == 2 and dets.num_frames == 401
  assert sum(len(i) for _, i in dets.frames()) == 2
  assert any('399 frames without any detection' in m for m in warnings_of(caplog))


def test_empty_file(tmp_path):
  fields = raw_fields(n=0)
  save_raw(tmp_path / 'empty.npz', **fields)
  dets = io.load_npz(tmp_path / 'empty.npz')
  assert len(dets) == 0 and dets.num_frames == 0 and dets.appe.shape == (0, 4)
  assert list(dets.frames()) == []


def test_check_compatible_names_file_and_field():
  a, b = make_dets(da=5, source='a.npz'), make_dets(da=5, source='b.npz')
  io.check_compatible([a, b])
  c = make_dets(da=7, source='c.npz')
  with pytest.raises(ValueError, match=r'c\.npz: field appe has size \[7\].*a\.npz has size \[5\]'):
    io.check_compatible([a, b, c])
  d = make_dets(da=5, uv=True, source='d.npz')
  with pytest.raises(ValueError, match=r'd\.npz: field uv has size \[4, 6, 6\].*a\.npz has absent'):
    io.check_compatible([a, d])


# ------------------------------------------------------------------------------------------------
# MOTChallenge


def write_seq(tmp_path, det: str | None = None, gt: str | None = None):
  seq = tmp_path / 'MOT17-02'
  (seq / 'det').mkdir(parents=True)
  (seq / 'gt').mkdir()
  (seq / 'seqinfo.ini').write_text(
      '[Sequence]\nname=MOT17-02\nimDir=img1\nframeRate=30\nseqLength=6\nimWidth=1920\n'
      'imHeight=1080\nimExt=.jpg\n')
  if det is not None:
    (seq / 'det' / 'det.txt').write_text(det)
  if gt is not None:
    (seq / 'gt' / 'gt.txt').write_text(gt)
  return seq


def test_load_mot_det(tmp_path):
  seq = write_seq(tmp_path, det=(
      '1,-1,100,200,50,100,0.9,-1,-1,-1\n'
      '1,-1,400,200,50,200,0.4,-1,-1,-1\n'
      '3,-1,110,210,50,540,0.8,-1,-1,-1\n'))
  dets = io.load_mot(seq / 'det' / 'det.txt')
  np.testing.assert_array_equal(dets.frame, [0, 0, 2])  # 1-based in the file
  assert dets.image_size == (1080, 1920) and dets.num_frames == 6  # from seqinfo.ini
  np.testing.assert_allclose(dets.conf, [0.9, 0.4, 0.8])
  assert dets.gt_id is None and dets.appe.shape == (3, 0) and dets.pose.shape == (3, 0)
  np.testing.assert_allclose(dets.loca[:, :2], [[125, 250], [425, 300], [135, 480]])  # box centre
  np.testing.assert_allclose(dets.loca[:, 2], np.log(np.array([100, 200, 540]) / 1080))
  assert np.all(np.diff(dets.loca[:, 2]) > 0)  # taller box = nearer


def test_load_mot_gt_filters_considered_pedestrians(tmp_path):
  seq = write_seq(tmp_path, gt=(
      '1,1,100,200,50,100,1,1,0.9\n'
      '1,2,300,200,50,100,0,1,1.0\n'  # not considered
      '1,3,500,200,50,100,1,3,1.0\n'  # a car
      '2,1,105,200,50,100,1,1,0.8\n'
      '2,4,700,200,50,100,1,7,1.0\n'))  # a static person: a distractor
  dets = io.load_mot(seq / 'gt' / 'gt.txt')
  np.testing.assert_array_equal(dets.frame, [0, 1])
  np.testing.assert_array_equal(dets.gt_id, [1, 1])
  np.testing.assert_array_equal(dets.conf, [1, 1])
  distractors = io.load_mot(seq / 'gt' / 'gt.txt', classes=io.MOT_DISTRACTOR_CLASSES)
  np.testing.assert_array_equal(distractors.gt_id, [4])


def test_load_mot_without_image_size(tmp_path, caplog):
  path = tmp_path / 'dets.txt'
  path.write_text('1,-1,10,20,30,40,0.9\n2,-1,15,20,30,80,0.9\n')
  with caplog.at_level(logging.WARNING):
    dets = io.load_mot(path)
  assert dets.image_size == (100, 45)
  assert any('no image size' in m for m in warnings_of(caplog))
  given = io.load_mot(path, image_size=(480, 640))
  np.testing.assert_allclose(given.loca[:, 2], np.log([40 / 480, 80 / 480]))


def test_load_mot_bad_rows(tmp_path):
  path = tmp_path / 'det.txt'
  path.write_text('1,-1,10,20,30,40,0.9\n2,-1,oops,20,30,40,0.9\n')
  with pytest.raises(ValueError, match=r'det\.txt: line 2'):
    io.load_mot(path, image_size=(100, 100))
  path.write_text('0,-1,10,20,30,40,0.9\n')
  with pytest.raises(ValueError, match=r'det\.txt: field frame.*start at 1'):
    io.load_mot(path, image_size=(100, 100))
  path.write_text('')
  assert len(io.load_mot(path, image_size=(100, 100))) == 0


def test_mot_tracks_round_trip(tmp_path):
  rows = np.array([[2, 7, 1.5, 2.25, 30, 40, 0.75],
                   [0, 3, 10, 20, 30, 40, 0.9],
                   [0, 1, 11, 21, 31, 41, 1.0]])
  path = tmp_path / 'out' / 'MOT17-02.txt'
  io.save_mot(rows, path)
  lines = path.read_text().splitlines()
  assert lines[0] == '1,1,11.000,21.000,31.000,41.000,1,-1,-1,-1'
  assert lines[2] == '3,7,1.500,2.250,30.000,40.000,0.75,-1,-1,-1'
  back = io.load_mot_tracks(path)
  np.testing.assert_allclose(back, rows[[2, 1, 0]])
  as_dets = io.load_mot(path, image_size=(100, 100), kind='det')  # a result file has ids
  np.testing.assert_array_equal(as_dets.gt_id, [1, 3, 7])
  io.save_mot(np.zeros((0, 7)), tmp_path / 'empty.txt')
  assert io.load_mot_tracks(tmp_path / 'empty.txt').shape == (0, 7)


# ------------------------------------------------------------------------------------------------
# the released tracker's pickle


def test_pickle_round_trip_from_tracker_output(tmp_path, caplog):
  rows = np.array([[0, 1, 10, 20, 30, 60, 0.9],
                   [0, 2, 100, 20, 30, 90, 0.8],
                   [1, 1, 12, 20, 30, 60, 0.95],
                   [3, 2, 104, 20, 30, 90, 0.85]])
  k = len(rows)
  rng = np.random.default_rng(1)
  appe = rng.normal(size=(k, 6)).astype(np.float32)
  pose = rng.normal(size=(k, 4)).astype(np.float32)
  loca = io.location_from_boxes(rows[:, 2:6], 240)
  smpl = [{'betas': np.full(10, float(i))} for i in range(k)]
  shot = np.array([0, 0, 1, 0, 0])
  path = tmp_path / 'phalp.pkl'
  io.save_phalp_pickle(rows, path, video='clip', shot=shot, image_size=(240, 320),
                       features={'appe': appe, 'pose': pose, 'loca': loca, 'smpl': smpl})
  with open(path, 'rb') as f:
    raw = pickle.load(f)
  assert list(raw) == [f'clip/{t:06d}.jpg' for t in range(5)]
  entry = raw['clip/000000.jpg']
  assert entry['time'] == 0 and entry['tid'] == [1, 2] and entry['tracked_ids'] == [1, 2]
  assert entry['tracked_time'] == [0, 0] and raw['clip/000002.jpg']['shot'] == 1
  assert raw['clip/000004.jpg']['tid'] == []

  with caplog.at_level(logging.WARNING):
    out = io.load_phalp_pickle(path)
  assert not warnings_of(caplog)
  np.testing.assert_allclose(out.tracks, rows)
  dets = out.detections
  np.testing.assert_array_equal(dets.frame, rows[:, 0])
  np.testing.assert_array_equal(dets.gt_id, rows[:, 1])
  np.testing.assert_allclose(dets.bbox, rows[:, 2:6])
  np.testing.assert_allclose(dets.conf, rows[:, 6])
  np.testing.assert_array_equal(dets.appe, appe)
  np.testing.assert_array_equal(dets.pose, pose)
  np.testing.assert_allclose(dets.loca, loca)
  np.testing.assert_array_equal(dets.shot, [0, 0, 1, 1, 1])  # the flags read as a shot index
  assert dets.image_size == (240, 320) and dets.num_frames == 5
  assert [s['betas'][0] for s in out.extras['smpl']] == [0, 1, 2, 3]


def test_pickle_in_released_layout(tmp_path):
  """Lost tracks are skipped, the box centre is x + w/2, nearness comes from the camera depth."""
  def loca99(z):
    return np.concatenate([np.zeros(90), [0.1, 0.2, z] * 3])
  data = {
      '/data/img/000001.jpg': {
          'time': 0, 'shot': 0, 'tid': [5], 'bbox': [np.array([100., 50., 40., 80.])],
          'conf': [np.float32(0.9)], 'tracked_ids': [5],
          'tracked_bbox': [np.array([100., 50., 40., 80.])],
          'tracked_time': [0], 'size': [[480, 640]], 'appe': [np.ones(4096, np.float32)],
          'pose': [np.zeros(229, np.float32)], 'loca': [loca99(20.0)],
          'camera': [np.array([0.1, 0.2, 20.0])], '3d_joints': [np.zeros((45, 3))]},
      '/data/img/000002.jpg': {
          'time': 1, 'shot': 0, 'tid': [5, 6],
          'bbox': [np.array([100., 50., 40., 80.]), np.array([300., 60., 50., 100.])],
          'conf': [np.float32(0.9), np.float32(0.95)], 'tracked_ids': [6],
          'tracked_bbox': [np.array([300., 60., 50., 100.])], 'tracked_time': [1, 0],
          'size': [[480, 640], [480, 640]], 'appe': [np.ones(4096, np.float32)] * 2,
          'pose': [np.zeros(229, np.float32)] * 2, 'loca': [loca99(20.0), loca99(10.0)],
          'camera': [np.array([0.1, 0.2, 20.0]), np.array([0.1, 0.2, 10.0])],
          '3d_joints': [np.zeros((45, 3))] * 2},
  }
  path = tmp_path / 'released.pkl'
  with open(path, 'wb') as f:
    pickle.dump(data, f)
  out = io.load_phalp_pickle(path)
  np.testing.assert_allclose(
      out.tracks, [[0, 5, 100, 50, 40, 80, 0.9], [1, 6, 300, 60, 50, 100, 0.95]], rtol=1e-6)
  dets = out.detections
  assert dets.appe.shape == (2, 4096) and dets.pose.shape == (2, 229)  # sizes from the data
  np.testing.assert_allclose(dets.loca, [[120, 90, -np.log(20)], [325, 110, -np.log(10)]])
  assert dets.image_size == (480, 640) and len(out.extras['3d_joints']) == 2


def test_pickle_errors(tmp_path, monkeypatch):
  path = tmp_path / 'bad.pkl'
  with open(path, 'wb') as f:
    pickle.dump({'f/000000.jpg': {'time': 0, 'tid': [1, 2], 'bbox': [np.zeros(4)]}}, f)
  with pytest.raises(ValueError, match=r"bad\.pkl: frame 'f/000000.jpg' field bbox has 1 entries"):
    io.load_phalp_pickle(path, image_size=(10, 10))
  # A joblib pickle holding arrays refers to joblib's classes; without joblib that is a clear error.
  path.write_bytes(b'\x80\x04cjoblib.numpy_pickle\nNumpyArrayWrapper\n.')
  monkeypatch.setitem(sys.modules, 'joblib', None)
  monkeypatch.delitem(sys.modules, 'joblib.numpy_pickle', raising=False)
  with pytest.raises(ValueError, match=r'bad\.pkl: cannot be read with pickle.*pip install joblib'):
    io.load_phalp_pickle(path)


def test_pickle_interoperates_with_joblib(tmp_path):
  joblib = pytest.importorskip('joblib')
  rows = np.array([[0, 1, 10, 20, 30, 60, 0.9], [1, 1, 12, 20, 30, 60, 0.8]])
  ours = tmp_path / 'ours.pkl'
  io.save_phalp_pickle(rows, ours, image_size=(100, 100), features={'appe': np.ones((2, 3))})
  assert joblib.load(ours)['video/000001.jpg']['tid'] == [1]
  theirs = tmp_path / 'theirs.pkl'
  joblib.dump(joblib.load(ours), theirs)
  out = io.load_phalp_pickle(theirs)
  np.testing.assert_allclose(out.tracks, rows)
  assert out.detections.appe.shape == (2, 3)
