"""PHALP extensions: the histogram shot detector, LMC (section 2.7) and the Nelder-Mead fit of the
five association parameters (``launch.fit_phalp``). Small inputs: the whole file runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest

from phalp_jax import fit, io, shots, synthetic, tracker
from tokenizers_jax import video


# ------------------------------------------------------------------------------------------------
# Shot detector


def panorama(seed: int, tint: tuple[int, int, int], h: int = 64, w: int = 320) -> np.ndarray:
  """A smooth random-colour RGB image, pulled towards ``tint``."""
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32)
  img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
  return np.clip(0.4 * img + 0.6 * np.asarray(tint, np.float32), 0, 255).astype(np.uint8)


def pan(image: np.ndarray, frames: int, step: int = 3, width: int = 96) -> np.ndarray:
  """A camera panning right over ``image``: ``[frames, H, width, 3]``."""
  return np.stack([image[:, i * step:i * step + width] for i in range(frames)])


def test_shot_detector_finds_the_cut_in_a_video_file_and_no_false_cut(tmp_path):
  a = pan(panorama(0, (200, 60, 40)), 30)   # reddish scene, panning
  b = pan(panorama(1, (40, 90, 200)), 20)   # bluish scene, panning
  path = video.write_video(str(tmp_path / 'cut.mp4'), np.concatenate([a, b]), fps=10)
  expect = np.repeat([0, 1], [30, 20])
  np.testing.assert_array_equal(shots.detect_shots(path), expect)  # streamed from the file
  np.testing.assert_array_equal(shots.detect_shots(iter(np.concatenate([a, b]))), expect)
  np.testing.assert_array_equal(shots.detect_shots(np.concatenate([a, b]), method='correlation'),
                                expect)
  dist = shots.histogram_distances(path)
  assert dist[30] > 0.7 and np.delete(dist, 30).max() < 0.25
  detector = shots.ShotDetector()  # streaming, frame by frame next to a live Tracker
  assert [t for t, f in enumerate(np.concatenate([a, b])) if detector.update(f)] == [30]
  assert detector.shot == 1 and detector.frame == 50
  dets = io.Detections(frame=[0, 49], bbox=[[0, 0, 10, 20]] * 2, conf=[1, 1], appe=np.zeros((2, 0)),
                       pose=np.zeros((2, 0)), loca=np.zeros((2, 3)), image_size=(64, 96),
                       num_frames=50, source='clip.npz')
  np.testing.assert_array_equal(shots.with_shots(dets, path).shot, expect)
  with pytest.raises(ValueError, match='clip.npz: field shot'):
    shots.with_shots(dets, a)
  # A slow pan alone: one shot.
  assert shots.detect_shots(pan(panorama(2, (90, 160, 60), w=400), 60, step=5)).max() == 0
  # min_shot_length: a one-frame flash is one cut, not two.
  flash = np.concatenate([a[:10], b[:1], a[10:20]])
  np.testing.assert_array_equal(shots.detect_shots(flash), np.repeat([0, 1, 2], [10, 1, 10]))
  np.testing.assert_array_equal(shots.detect_shots(flash, min_shot_length=5),
                                np.repeat([0, 1], [10, 11]))


def test_shot_boundaries_to_index_and_errors(tmp_path):
  index = shots.shot_boundaries_to_index([7, 3, 3, 0], 10)
  np.testing.assert_array_equal(index, [0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(shots.shot_index_to_boundaries(index), [3, 7])
  np.testing.assert_array_equal(tracker.shot_index(index, 10), index)  # the tracker takes it
  with pytest.raises(ValueError, match='boundaries'):
    shots.shot_boundaries_to_index([10], 10)
  with pytest.raises(ValueError, match='uint8'):
    shots.detect_shots([np.zeros((4, 4), np.uint8)])
  with pytest.raises(ValueError, match='missing.mp4'):
    shots.detect_shots(str(tmp_path / 'missing.mp4'))


# ------------------------------------------------------------------------------------------------
# LMC


def walker(frames, *, x0: float, y: float, vx: float, appe, pose) -> list[tuple]:
  return [(t, (x0 + vx * t, y, 40.0, 100.0), 0.95, appe, pose) for t in frames]


def make_dets(rows: list[tuple], num_frames: int) -> io.Detections:
  rows = sorted(rows, key=lambda r: r[0])
  n = len(rows)
  bbox = np.array([r[1] for r in rows], np.float64).reshape(n, 4)
  return io.Detections(
      frame=np.array([r[0] for r in rows]), bbox=bbox, conf=np.array([r[2] for r in rows]),
      appe=np.array([r[3] for r in rows], np.float32), pose=np.array([r[4] for r in rows]),
      loca=io.location_from_boxes(bbox, 480), image_size=(480, 640), num_frames=num_frames,
      gt_id=np.array([r[5] for r in rows]))


def test_lmc_merges_a_reappearing_person_back_into_their_old_id():
  """Person A walks, is missed for frames 20-34 and comes back with a pose the pose predictor did
  not expect (a new tracklet under the association gate); person B walks throughout; person C
  appears while A is lost, elsewhere. LMC regresses the new tracklet's 7 locations back to A's last
  frame, finds location and appearance agreeing, and gives it A's id (earlier rows too)."""
  T = 60
  a = (walker(range(20), x0=100, y=100, vx=2, appe=(1, 0, 0), pose=(0, 1))
       + walker(range(35, T), x0=100, y=100, vx=2, appe=(1, 0, 0), pose=(20, 0)))
  b = walker(range(T), x0=100, y=300, vx=1, appe=(0, 1, 0), pose=(0, 1))
  c = walker(range(25, T), x0=560, y=150, vx=-1, appe=(0, 0, 1), pose=(0, 1))
  rows = [r + (g,) for g, person in enumerate((a, b, c)) for r in person]
  dets = make_dets(rows, T)

  def ids_of(out, g):
    keep = np.isin(out[:, 0], dets.frame[dets.gt_id == g])
    box = {(int(f), tuple(x)): gid for f, x, gid in zip(dets.frame, dets.bbox, dets.gt_id)}
    return {int(r[1]) for r in out if box[(int(r[0]), tuple(r[2:6]))] == g} if keep.any() else set()

  without = tracker.track_video(dets, tracker.PhalpParams(lmc=False))
  assert len(ids_of(without, 0)) == 2  # the re-appearance is a new id without LMC
  params = tracker.PhalpParams()
  assert params.lmc  # on by default
  out, snaps = tracker.track_video(dets, params, return_tracks=True)
  assert ids_of(out, 0) == {1} and len(ids_of(out, 1)) == 1 and len(ids_of(out, 2)) == 1
  assert len({*ids_of(out, 0), *ids_of(out, 1), *ids_of(out, 2)}) == 3  # C was not merged into A
  # Streaming gives the same rows after relabelling; step returned the new id until the merge.
  live = tracker.Tracker(params)
  np.testing.assert_array_equal(live.track(dets), out)
  (new, old), = live.id_map.items()
  assert old == 1 and new not in ids_of(out, 0)
  # The merged tracklet holds both tracklets' hits; the per-frame snapshots are relabelled too.
  tracks = live.tracks()
  assert tracks['hits'][tracks['track_id'] == 1][0] == 20 + 25
  assert new not in snaps['track_id'] and 1 in snaps['track_id'][40]


# ------------------------------------------------------------------------------------------------
# Fitting


def scene_dets(scene: dict, source: str = '<memory>') -> io.Detections:
  return io.Detections(**{k: scene[k] for k in ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca',
                                                 'gt_id')},
                       image_size=tuple(scene['image_size']), shot=scene['shot'],
                       num_frames=len(scene['shot']), source=source)


def test_association_error_definition():
  # gt: identity 0 in frames 0-3, identity 1 in frames 0-3, a false positive in frame 1.
  rows = [(t, (10.0 + 100 * g, 10.0, 20.0, 50.0), 0.9, (0.0,), (0.0,), g)
          for t in range(4) for g in range(2)] + [(1, (300.0, 10.0, 20.0, 50.0), 0.9, (0.0,),
                                                   (0.0,), -1)]
  dets = make_dets(rows, 4)
  box = lambda t, g: [10.0 + 100 * g, 10.0, 20.0, 50.0]
  # Perfect output: 6 gt links, 6 predicted links, no error.
  perfect = np.array([[t, g + 1, *box(t, g), 0.9] for t in range(4) for g in range(2)])
  assert fit.link_counts(dets, perfect, 0.8) == fit.LinkCounts(6, 0, 6, 0)
  # Identity 0 is not output in frame 1 and the false positive there joins its id 1; identity 1
  # switches from id 2 to id 3 at frame 2. Missed gt links: 0:(0,1), 0:(1,2), 1:(1,2). Predicted
  # links: id 1: A0-FP, FP-A2 (both wrong), A2-A3; id 2: B0-B1; id 3: B2-B3.
  out = np.array([[t, (1 if g == 0 else (2 if t < 2 else 3)), *box(t, g), 0.9]
                  for t in range(4) for g in range(2) if not (g == 0 and t == 1)]
                 + [[1, 1, 300.0, 10.0, 20.0, 50.0, 0.9]])
  counts = fit.link_counts(dets, out, 0.8)
  assert counts == fit.LinkCounts(gt_links=6, missed=3, pred_links=5, wrong=2)
  assert counts.error == pytest.approx(5 / 11)
  with pytest.raises(ValueError, match='gt_id'):
    fit.link_counts(dataclasses.replace(dets, gt_id=None), out, 0.8)


@pytest.fixture(scope='module')
def small_scenes():
  cfg = synthetic.get_config('medium', num_frames=48, people=4)
  return [synthetic.make_scene(cfg, seed=(5, i)) for i in range(3)]


def test_fit_improves_a_bad_start(small_scenes):
  dets = [scene_dets(s) for s in small_scenes]
  bad = tracker.PhalpParams(beta_xy=0.1, lmc=False)   # the 2D location term far too strict
  z = fit.to_search(bad)
  np.testing.assert_allclose(fit.from_search(z, bad).to_vector(), bad.to_vector(), rtol=1e-9)
  result = fit.fit(dets, bad, maxfev=10, progress=False)
  assert result.evaluations == 10 and result.objective_before == result.history[0][1]
  assert result.objective_after < result.objective_before
  assert result.params.lmc is False  # other settings kept
  again = fit.association_error(dets, fit.track_all(dets, result.params),
                                result.params.conf_threshold)
  assert again == pytest.approx(result.objective_after)
  # Other betas reuse the compiled loop (they are traced knobs): nothing recompiles.
  compiled = tracker._scan_jit._cache_size()
  fit.track_all(dets, fit.from_search(fit.to_search(bad) + 0.3, bad))
  assert tracker._scan_jit._cache_size() == compiled


def test_fit_phalp_cli_writes_json(tmp_path, small_scenes):
  from launch import fit_phalp
  train, held = tmp_path / 'train', tmp_path / 'held'
  for directory, scenes in ((train, small_scenes[:2]), (held, small_scenes[2:])):
    os.makedirs(directory / synthetic.GT_DIR)
    for i, s in enumerate(scenes):
      synthetic.save_scene_npz(s, str(directory / f'{i:04d}.npz'))
      if directory == held:
        synthetic.save_gt_txt(s, str(directory / synthetic.GT_DIR / f'{i:04d}.txt'))
  out = tmp_path / 'fit' / 'params.json'
  payload = fit_phalp.main(['--input', str(train), '--output', str(out), '--maxfev', '4',
                            '--eval', str(held), '--no_progress'])
  data = json.loads(out.read_text())
  assert data == json.loads(json.dumps(payload))
  assert data['fields'] == list(tracker.VECTOR_FIELDS) and len(data['vector']) == 5
  assert data['objective']['after'] <= data['objective']['before']
  assert data['evaluations'] == 4 and data['train']['files'] == ['0000.npz', '0001.npz']
  assert data['heldout']['ground_truth'] == 'gt/*.txt'
  for when in ('before', 'after'):
    assert set(data['heldout'][when]) >= {'idf1', 'mota', 'hota', 'num_switches'}
  assert not [f for f in os.listdir(out.parent) if f != 'params.json']  # no temporary left
  loaded = fit.load_params(out)
  np.testing.assert_allclose(loaded.to_vector(), data['vector'])
  assert loaded.lmc == data['other_params']['lmc']
  # A training file without gt_id is refused, naming the file and the field.
  np.savez(train / '0002.npz', **{k: v for k, v in np.load(train / '0000.npz').items()
                                 if k != 'gt_id'})
  with pytest.raises(SystemExit, match=r'0002\.npz: field gt_id'):
    fit_phalp.main(['--input', str(train), '--output', str(out), '--maxfev', '2',
                    '--no_progress'])
