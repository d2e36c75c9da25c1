"""The PHALP tracker: predictors (Eq. 2.2-2.4), lifecycle (Algorithm 1), shots, capacity, paths.

Small synthetic scenes (60 frames); the streaming and compiled paths must agree row for row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from phalp_jax import baseline, io, metrics, synthetic, tracker
from phalp_jax.cost import INVALID_COST
from phalp_jax.predict import aggregate_embedding, aggregate_uv, last_pose, predict_location

T = 60


def scene_dets(scene: dict, keep: np.ndarray | None = None, **changes) -> io.Detections:
  """Detections of a synthetic scene (optionally a subset of its rows)."""
  fields = {k: scene[k] for k in ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca', 'gt_id')}
  if keep is not None:
    fields = {k: v[keep] for k, v in fields.items()}
  shot = changes.pop('shot', scene['shot'])
  fields.update(changes)
  return io.Detections(**fields, image_size=tuple(scene['image_size']), shot=shot,
                       num_frames=len(scene['shot']))


def ids_by_gt(rows: np.ndarray, dets: io.Detections, frames=None) -> dict[int, set[int]]:
  """gt id -> predicted ids of its output rows (rows are matched to detections by frame + box)."""
  out: dict[int, set[int]] = {}
  for r in rows:
    if frames is not None and int(r[0]) not in frames:
      continue
    k = np.flatnonzero((dets.frame == r[0]) & np.all(dets.bbox == r[2:6], axis=1))[0]
    out.setdefault(int(dets.gt_id[k]), set()).add(int(r[1]))
  return out


def person(frames, *, x0: float = 100.0, vx: float = 2.0, appe=(1.0, 0.0), pose=(0.0, 1.0),
           conf: float = 0.95) -> list[tuple]:
  """Rows (frame, box, conf, appe, pose) of one person walking right at ``vx`` px/frame."""
  return [(t, (x0 + vx * t, 100.0, 40.0, 100.0), conf, appe, pose) for t in frames]


def make_dets(rows: list[tuple], num_frames: int, shot=None) -> io.Detections:
  rows = sorted(rows, key=lambda r: r[0])
  n = len(rows)
  bbox = np.array([r[1] for r in rows], np.float64).reshape(n, 4)
  return io.Detections(
      frame=np.array([r[0] for r in rows], np.int64), bbox=bbox,
      conf=np.array([r[2] for r in rows]), appe=np.array([r[3] for r in rows]).reshape(n, -1),
      pose=np.array([r[4] for r in rows]).reshape(n, -1),
      loca=io.location_from_boxes(bbox, 480), image_size=(480, 640), num_frames=num_frames,
      shot=shot)


@pytest.fixture(scope='module')
def medium_scene():
  return synthetic.make_scene(synthetic.get_config('medium', num_frames=T), seed=0)


# ------------------------------------------------------------------------------------------------
# Parameters


def test_params_vector_roundtrip_and_validation():
  p = tracker.PhalpParams()
  np.testing.assert_allclose(p.to_vector(), [4.0536, 1.3070, 0.3792, 4.1658, 100.0])
  assert (p.history, p.max_age, p.n_init, p.conf_threshold) == (7, 50, 5, 0.8)
  assert p.gate == pytest.approx(np.log(100.0))
  q = tracker.PhalpParams.from_vector([1, 2, 3, 4, 50], n_init=3)
  assert (q.beta_a, q.beta_p, q.beta_xy, q.beta_n, q.beta_th, q.n_init) == (1, 2, 3, 4, 50, 3)
  np.testing.assert_array_equal(q.to_vector(), [1, 2, 3, 4, 50])
  with pytest.raises(ValueError, match='beta_xy'):
    tracker.PhalpParams(beta_xy=0.0)
  with pytest.raises(ValueError, match='5 values'):
    tracker.PhalpParams.from_vector([1, 2, 3])
  table = tracker.quantile_table(7)
  assert table[7] == pytest.approx(scipy.stats.t.ppf(0.975, 5), rel=1e-6)
  assert table[1] == pytest.approx(scipy.stats.norm.ppf(0.975), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Predictors


def test_location_interval_matches_eq_2_4_for_three_or_more_observations():
  knobs = tracker.PhalpParams(xy_noise=0.0, n_noise=0.0).knobs()
  w = 7
  times = np.array([0, 0, 0, 10, 11, 13, 14], np.int32)
  valid = np.array([0, 0, 0, 1, 1, 1, 1], bool)
  rng = np.random.default_rng(0)
  loca = np.zeros((w, 3), np.float32)
  loca[:, 0] = 100 + 3.0 * times + rng.normal(0, 2, w)
  loca[:, 1] = 50 - 1.0 * times + rng.normal(0, 2, w)
  loca[:, 2] = -2.0 + 0.01 * times + rng.normal(0, 0.02, w)
  target = 17
  pred, interval = predict_location(jnp.asarray(loca), jnp.asarray(times), jnp.asarray(valid),
                                    jnp.int32(target), jnp.float32(100.0), knobs)
  t, y = times[valid].astype(np.float64), loca[valid].astype(np.float64)
  n = len(t)
  for c in range(3):
    slope, icept = np.polyfit(t, y[:, c], 1)
    mse = np.sum((y[:, c] - (icept + slope * t)) ** 2) / (n - 2)
    lever = 1 + 1 / n + (target - t.mean()) ** 2 / np.sum((t - t.mean()) ** 2)
    expect = scipy.stats.t.ppf(0.975, n - 2) * np.sqrt(mse * lever)
    assert float(pred[c]) == pytest.approx(icept + slope * target, rel=1e-4, abs=1e-3)
    assert float(interval[c]) == pytest.approx(expect, rel=1e-3)


@pytest.mark.parametrize('n_obs', [1, 2])
def test_location_interval_finite_for_short_histories(n_obs):
  params = tracker.PhalpParams()
  knobs = params.knobs()
  times = np.array([0] * (7 - n_obs) + [4, 5][-n_obs:], np.int32)
  valid = np.arange(7) >= 7 - n_obs
  loca = np.zeros((7, 3), np.float32)
  loca[valid] = [[200.0, 100.0, -2.0], [204.0, 101.0, -1.99]][-n_obs:]
  box_h = 80.0
  z = scipy.stats.norm.ppf(0.975)
  widths = []
  for target in (6, 15):
    pred, interval = jax.device_get(predict_location(
        jnp.asarray(loca), jnp.asarray(times), jnp.asarray(valid), jnp.int32(target),
        jnp.float32(box_h), knobs))
    assert np.all(np.isfinite(pred)) and np.all(np.isfinite(interval)) and np.all(interval > 0)
    np.testing.assert_allclose(pred, loca[-1], rtol=1e-6)  # constant position
    dt = target - 5
    xy = z * np.hypot(params.xy_noise * box_h, params.xy_speed * box_h * dt)
    nn = z * np.hypot(params.n_noise, params.n_speed * dt)
    np.testing.assert_allclose(interval, [xy, xy, nn], rtol=1e-5)
    widths.append(interval)
  assert np.all(widths[1] > widths[0])  # uncertainty grows with the time since the observation
  # An exact line (MSE 0) with 3+ points gets the noise floor, not 0 (no 0/0 anywhere).
  t3 = np.arange(7, dtype=np.int32)
  exact = np.stack([2.0 * t3, 1.0 * t3, 0.01 * t3], -1).astype(np.float32)
  _, interval = predict_location(jnp.asarray(exact), jnp.asarray(t3), jnp.ones(7, bool),
                                 jnp.int32(8), jnp.float32(box_h), knobs)
  assert np.all(np.asarray(interval) > 0)


def test_appearance_aggregation_eq_2_2_on_uv_maps():
  alpha0 = jnp.float32(0.1)
  old = np.zeros((4, 2, 2), np.float32)
  new = np.zeros((4, 2, 2), np.float32)
  old[:3], new[:3] = 1.0, 3.0
  # pixel (0,0): both visible; (0,1): only new; (1,0): only old; (1,1): neither.
  old[3] = [[1, 0], [1, 0]]
  new[3] = [[1, 1], [0, 0]]
  out = np.asarray(aggregate_uv(jnp.asarray(old), jnp.asarray(new), alpha0))
  np.testing.assert_allclose(out[:3, 0, 0], 0.9 * 1 + 0.1 * 3)  # alpha = alpha0
  np.testing.assert_allclose(out[:3, 0, 1], 3.0)                # alpha = 1
  np.testing.assert_allclose(out[:3, 1, 0], 1.0)                # alpha = 0
  np.testing.assert_allclose(out[:3, 1, 1], 1.0)                # nothing seen: unchanged
  np.testing.assert_array_equal(out[3], [[1, 1], [1, 0]])       # visibility: ever seen
  emb = aggregate_embedding(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), alpha0)
  np.testing.assert_allclose(emb, [0.9, 0.1])


def test_uv_maps_are_used_when_given():
  """Two people with the same box, embedding and pose, listed in random order, told apart only by
  their UV textures (each frame shows a different part of them)."""
  rng = np.random.default_rng(0)
  tex = rng.uniform(0, 1, (2, 3, 4, 4)).astype(np.float32)
  rows, uvs, who = [], [], []
  for t in range(16):
    for p in rng.permutation(2):
      rows.append((t, (100.0, 100.0, 40.0, 100.0), 0.9 + 0.01 * p, (1.0,), (0.0,)))
      vis = np.zeros((1, 4, 4), np.float32)
      vis[..., (t + 2 * p) % 4] = 1
      vis[..., (t + 1) % 4] = 1
      uvs.append(np.concatenate([tex[p], vis]))
      who.append(p)
  dets = dataclasses.replace(make_dets(rows, 16), uv=np.stack(uvs), gt_id=np.array(who))
  params = tracker.PhalpParams(n_init=2)
  out = tracker.track_video(dets, params)
  np.testing.assert_array_equal(tracker.Tracker(params).track(dets), out)
  ids = [set(out[np.isclose(out[:, 6], 0.9 + 0.01 * p), 1]) for p in range(2)]
  assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]
  blind = tracker.track_video(dataclasses.replace(dets, uv=None), params)
  assert any(len(set(blind[np.isclose(blind[:, 6], 0.9 + 0.01 * p), 1])) > 1 for p in range(2))


def test_default_pose_predictor_is_the_last_observation():
  hist = jnp.arange(12.0).reshape(4, 3)
  times = jnp.array([3, 7, 5, 0], jnp.int32)
  valid = jnp.array([True, True, True, False])
  np.testing.assert_array_equal(last_pose(hist, times, valid, jnp.int32(9)), [3.0, 4.0, 5.0])


# ------------------------------------------------------------------------------------------------
# Lifecycle (Algorithm 1)


def frames_and_ids(rows: np.ndarray) -> list[tuple[int, int]]:
  return [(int(r[0]), int(r[1])) for r in rows]


def test_tentative_not_output_before_n_init_hits():
  dets = make_dets(person(range(10)), 10)
  out = tracker.track_video(dets)
  assert frames_and_ids(out) == [(t, 1) for t in range(4, 10)]  # confirmed at its 5th hit
  live = tracker.Tracker()  # streaming with plain mappings, frame numbers implicit
  rows = [live.step({'bbox': dets.bbox[[t]], 'conf': dets.conf[[t]], 'appe': dets.appe[[t]],
                     'pose': dets.pose[[t]], 'loca': dets.loca[[t]]}) for t in range(10)]
  assert [len(r) for r in rows] == [0] * 4 + [1] * 6
  np.testing.assert_array_equal(np.concatenate(rows), out)
  assert live.tracks()['track_id'].tolist() == [1] and live.frame == 10


def test_tentative_dies_on_a_miss_and_ids_stay_dense():
  out = tracker.track_video(make_dets(person([0, 1, 2, *range(4, 12)]), 12))
  assert frames_and_ids(out) == [(t, 1) for t in range(8, 12)]  # restarted at frame 4


def test_confirmed_dies_after_max_age():
  params = tracker.PhalpParams(max_age=3)
  kept = tracker.track_video(make_dets(person([*range(6), 8, 9]), 10), params)
  assert frames_and_ids(kept) == [(4, 1), (5, 1), (8, 1), (9, 1)]  # missed 2 < 3 frames
  died = tracker.track_video(make_dets(person([*range(6), *range(9, 15)]), 15), params)
  assert frames_and_ids(died) == [(4, 1), (5, 1), (13, 2), (14, 2)]  # missed 3 frames: dead


def test_frames_without_detections_are_nan_free():
  rows = person(range(30), x0=50.0) + person(range(30), x0=400.0, appe=(0.0, 1.0), vx=-1.0)
  rows = [r for r in rows if not 10 <= r[0] < 16]
  dets = make_dets(rows, 34)
  trk = tracker.Tracker()
  out = trk.track(dets)
  assert np.isfinite(out).all() and set(out[:, 1]) == {1, 2}
  state = jax.device_get(trk.state)
  for name, value in zip(tracker.TrackerState._fields, state):
    assert np.all(np.isfinite(value)), name
  # The cost of the live slots against a frame of padding only is finite (INVALID_COST).
  frame = tracker.FrameBatch(
      t=np.array([34], np.int32), shot=np.zeros(1, np.int32), live=np.ones(1, bool),
      valid=np.zeros((1, 8), bool), bbox=np.zeros((1, 8, 4), np.float32),
      conf=np.zeros((1, 8), np.float32), appe=np.zeros((1, 8, 2), np.float32),
      pose=np.zeros((1, 8, 2), np.float32), loca=np.zeros((1, 8, 3), np.float32),
      uv=np.zeros((1, 8, 4, 0, 0), np.float32))
  cost = jax.jit(jax.vmap(tracker._cost, in_axes=(0, 0, None, None)), static_argnums=3)(
      trk.state, frame, trk.params.knobs(), last_pose)
  assert np.all(np.asarray(cost) == INVALID_COST)
  assert np.array_equal(tracker.track_video(dets), out)


# ------------------------------------------------------------------------------------------------
# Tracking behaviour on synthetic scenes


def test_streaming_equals_compiled_loop(medium_scene):
  dets = scene_dets(medium_scene)
  streamed = tracker.Tracker().track(dets)
  compiled = tracker.track_video(dets)
  assert len(compiled) > 100
  np.testing.assert_array_equal(streamed, compiled)
  # A batch of videos of different lengths and sizes gives each video's own result.
  short = synthetic.make_scene(synthetic.get_config('hard', num_frames=45), seed=1)
  videos = [dets, scene_dets(short), dets]
  batch, tracks = tracker.track_batch(videos, return_tracks=True)
  for video, rows in zip(videos, batch):
    np.testing.assert_array_equal(rows, tracker.Tracker().track(video))
  assert tracks[1]['track_id'].shape[0] == 45
  # Per-frame slot snapshots agree with the rows: every output id is a live confirmed slot.
  for frame, ident in frames_and_ids(batch[0]):
    assert ident in tracks[0]['track_id'][frame]


def test_ids_stable_for_well_separated_people():
  scene = synthetic.make_scene(synthetic.get_config('easy', num_frames=T), seed=0)
  dets = scene_dets(scene)
  out = tracker.track_video(dets)
  by_gt = ids_by_gt(out, dets)
  assert sorted(by_gt) == [0, 1, 2] and all(len(v) == 1 for v in by_gt.values())
  assert sorted(np.unique(out[:, 1]).astype(int)) == [1, 2, 3]
  assert metrics.evaluate(scene['gt_tracks'], out[:, :6])['num_switches'] == 0


def test_hidden_person_gets_their_id_back():
  """Each person of 4 easy scenes in turn loses every detection in frames 20-39."""
  # Appearance-led parameters: the default pose predictor (last observation) cannot follow the
  # synthetic poses over a 20-frame gap, and a 21-frame line extrapolation of a wandering walker
  # is rough, so pose and location are down-weighted against appearance.
  params = tracker.PhalpParams(beta_p=0.13, beta_xy=1.2)
  videos, who = [], []
  for seed in range(4):
    scene = synthetic.make_scene(synthetic.get_config('easy', num_frames=T), seed=seed)
    for g in range(3):
      hide = (scene['gt_id'] == g) & (scene['frame'] >= 20) & (scene['frame'] < 40)
      videos.append(scene_dets(scene, ~hide))
      who.append(g)
  outs = tracker.track_batch(videos, params)
  recovered = 0
  for dets, g, rows in zip(videos, who, outs):
    before = ids_by_gt(rows, dets, range(10, 20))[g]
    after = ids_by_gt(rows, dets, range(40, T))[g]
    recovered += before == after and len(before) == 1
    iou = baseline.track_iou(dets)
    assert ids_by_gt(iou, dets, range(10, 20))[g].isdisjoint(ids_by_gt(iou, dets, range(40, T))[g])
  assert recovered == len(videos), f'{recovered} of {len(videos)} kept their id'


def test_shot_change_drops_location_terms():
  for seed in (0, 2):
    scene = synthetic.make_scene(synthetic.get_config('easy', num_frames=T, shot_cuts=1), seed=seed)
    dets = scene_dets(scene)
    with_shots = ids_by_gt(tracker.track_video(dets), dets)
    assert all(len(v) == 1 for v in with_shots.values()), with_shots  # ids kept across the cut
    blind = dataclasses.replace(dets, shot=None)
    without = ids_by_gt(tracker.track_video(blind), blind)
    assert any(len(v) > 1 for v in without.values())  # the jump breaks location-based matching
  flags = np.zeros(T, np.int64)
  flags[scene['info']['cut_frames']] = 1  # the io flag form gives the same shot index
  np.testing.assert_array_equal(tracker.shot_index(flags, T), scene['shot'])


def test_capacity_grows_in_streaming_and_batched(medium_scene):
  dets = dataclasses.replace(scene_dets(medium_scene), source='clip.npz')
  reference = tracker.track_video(dets, capacity=64)
  small = tracker.Tracker(capacity=4)
  np.testing.assert_array_equal(small.track(dets), reference)
  assert small.capacity > 4
  np.testing.assert_array_equal(tracker.track_batch([dets], capacity=4)[0], reference)
  with pytest.raises(tracker.CapacityError, match=r'video 0 \(clip.npz\) needs more than 4 '):
    tracker.track_batch([dets], capacity=4, grow=False)
  with pytest.raises(tracker.CapacityError, match='max_capacity=4'):
    tracker.track_batch([dets], capacity=4, max_capacity=4)


def test_boxes_only_features_of_size_zero():
  scene = synthetic.make_scene(synthetic.get_config('easy', num_frames=T), seed=1)
  n = len(scene['frame'])
  dets = scene_dets(scene, appe=np.zeros((n, 0)), pose=np.zeros((n, 0)))
  out = tracker.track_video(dets)
  np.testing.assert_array_equal(out, tracker.Tracker().track(dets))
  assert all(len(v) == 1 for v in ids_by_gt(out, dets).values())


def test_phalp_beats_the_iou_baseline_on_hard():
  scenes = [synthetic.make_scene(synthetic.get_config('hard', num_frames=100), seed=s)
            for s in range(3)]
  outs = tracker.track_batch([scene_dets(s) for s in scenes])
  phalp, iou = [], []
  for scene, rows in zip(scenes, outs):
    phalp.append(metrics.evaluate(scene['gt_tracks'], rows[:, :6]))
    iou.append(metrics.evaluate(scene['gt_tracks'], baseline.track_iou(scene_dets(scene))[:, :6]))
  mean = lambda runs, key: float(np.mean([r[key] for r in runs]))
  for key in ('idf1', 'mota', 'hota'):
    print(f'hard {key}: PHALP {mean(phalp, key):.3f}  IoU baseline {mean(iou, key):.3f}')
  assert mean(phalp, 'idf1') > mean(iou, 'idf1') + 0.25
  assert mean(phalp, 'hota') > mean(iou, 'hota') + 0.1
