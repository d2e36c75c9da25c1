"""The IoU + Hungarian baseline tracker (Detect-and-Track, no re-identification)."""

from __future__ import annotations

import numpy as np

from phalp_jax import baseline, io


def detections(rows: list[tuple[int, float, float, float, float, float]],
               num_frames: int | None = None) -> io.Detections:
  """Detections from (frame, x, y, w, h, conf) tuples, without features."""
  table = np.asarray(rows, np.float64).reshape(-1, 6)
  n = len(table)
  return io.Detections(frame=table[:, 0].astype(int), bbox=table[:, 1:5], conf=table[:, 5],
                       appe=np.zeros((n, 0)), pose=np.zeros((n, 0)),
                       loca=io.location_from_boxes(table[:, 1:5], 480), image_size=(480, 640),
                       num_frames=num_frames)


def ids_by_frame(rows: np.ndarray) -> dict[int, list[int]]:
  out = {}
  for r in rows:
    out.setdefault(int(r[0]), []).append(int(r[1]))
  return out


def test_box_iou():
  a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
  b = np.array([[5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 10, 10]])
  iou = baseline.box_iou(a, b)
  np.testing.assert_allclose(iou, [[50 / 150, 0, 1], [0, 0, 0]])
  assert baseline.box_iou(np.zeros((0, 4)), b).shape == (0, 3)
  assert baseline.box_iou(a, np.zeros((0, 4))).shape == (2, 0)


def test_crossing_people_keep_their_ids():
  """Two people walk past each other in x on different rows (no overlap); listed in either order."""
  rows = []
  for t in range(30):  # they pass each other in x around frame 14
    a = (t, 10 + 10 * t, 50, 40, 80, 0.9)
    b = (t, 300 - 10 * t, 200, 40, 80, 0.95)
    rows += [a, b] if t % 2 else [b, a]
  out = baseline.track_iou(detections(rows))
  assert out.shape == (60, 7)
  ids_a = out[out[:, 3] == 50, 1]
  ids_b = out[out[:, 3] == 200, 1]
  assert len(ids_a) == len(ids_b) == 30
  assert set(ids_a) == {2} and set(ids_b) == {1}  # b is listed first in frame 0


def test_missing_for_one_frame_gets_a_new_id():
  rows = [(0, 10, 10, 40, 80, 0.9), (1, 12, 10, 40, 80, 0.9), (3, 14, 10, 40, 80, 0.9),
          (4, 15, 10, 40, 80, 0.9)]
  out = baseline.track_iou(detections(rows))
  assert ids_by_frame(out) == {0: [1], 1: [1], 3: [2], 4: [2]}


def test_low_confidence_detections_are_ignored():
  rows = [(0, 10, 10, 40, 80, 0.9), (0, 200, 10, 40, 80, 0.3), (1, 11, 10, 40, 80, 0.2),
          (2, 12, 10, 40, 80, 0.9)]
  out = baseline.track_iou(detections(rows))
  assert ids_by_frame(out) == {0: [1], 2: [2]}  # frame 1's detection is too weak: a gap
  assert np.all(out[:, 6] >= baseline.DEFAULT_CONF_THRESHOLD)
  low = baseline.track_iou(detections(rows), conf_threshold=0.1)
  assert ids_by_frame(low) == {0: [1, 2], 1: [1], 2: [1]}


def test_low_iou_is_not_a_match():
  rows = [(0, 0, 0, 40, 80, 0.9), (1, 35, 0, 40, 80, 0.9)]  # IoU 5/75
  assert ids_by_frame(baseline.track_iou(detections(rows))) == {0: [1], 1: [2]}
  loose = baseline.track_iou(detections(rows), iou_threshold=0.05)
  assert ids_by_frame(loose) == {0: [1], 1: [1]}


def test_empty_frames_end_tracks_and_empty_input():
  rows = [(0, 10, 10, 40, 80, 0.9), (2, 10, 10, 40, 80, 0.9)]
  dets = detections(rows, num_frames=5)
  out = baseline.track_iou(dets)
  assert ids_by_frame(out) == {0: [1], 2: [2]}
  np.testing.assert_array_equal(out, baseline.track_iou(dets))  # deterministic
  assert baseline.track_iou(detections([], num_frames=3)).shape == (0, 7)


def test_new_person_next_to_a_tracked_one():
  rows = [(0, 10, 10, 40, 80, 0.9), (1, 11, 10, 40, 80, 0.9), (1, 300, 10, 40, 80, 0.9)]
  out = baseline.track_iou(detections(rows))
  assert ids_by_frame(out) == {0: [1], 1: [1, 2]}


def test_output_round_trips_through_mot_and_pickle(tmp_path):
  rows = [(t, 10 + 2 * t, 10, 40, 80, 0.9) for t in range(4)]
  out = baseline.track_iou(detections(rows))
  io.save_mot(out, tmp_path / 'res.txt')
  np.testing.assert_allclose(io.load_mot_tracks(tmp_path / 'res.txt'), out)
  io.save_phalp_pickle(out, tmp_path / 'res.pkl', image_size=(480, 640))
  np.testing.assert_allclose(io.load_phalp_pickle(tmp_path / 'res.pkl').tracks, out)
