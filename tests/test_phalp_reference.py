"""The per-track NumPy reference (phalp_jax.reference) against the JAX tracker: equal rows.

The two share no code for the algorithm (predictors, costs, gating, lifecycle, ids), so equal ids
and boxes on synthetic scenes check both. LMC is off (the reference has none).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from launch import bench
from phalp_jax import io, reference, synthetic, tracker
from phalp_jax.predict import predict_location
from phalp_jax.state import PhalpParams

T = 60
PARAMS = PhalpParams(lmc=False)


def scene_dets(scene: dict, **changes) -> io.Detections:
  """Detections of a synthetic scene (fields replaced by ``changes``)."""
  fields = {k: scene[k] for k in ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca', 'gt_id')}
  fields.update(changes)
  return io.Detections(**fields, image_size=tuple(scene['image_size']), shot=scene['shot'],
                       num_frames=len(scene['shot']))


def assert_same_rows(got: np.ndarray, want: np.ndarray, name: str) -> None:
  assert got.shape == want.shape, f'{name}: {got.shape} rows vs {want.shape}'
  bad = np.flatnonzero(np.any(got != want, axis=1))
  assert not len(bad), f'{name}: first differing row {bad[0]}: {got[bad[0]]} vs {want[bad[0]]}'


def test_reference_rows_equal_the_jax_tracker_on_easy_and_medium():
  scenes = [(f'{preset}/{seed}', synthetic.make_scene(synthetic.get_config(preset, num_frames=T),
                                                       seed=seed))
            for preset in ('easy', 'medium') for seed in range(3)]
  videos = [scene_dets(s) for _, s in scenes]
  outs = tracker.track_batch(videos, PARAMS)
  for (name, _), dets, out in zip(scenes, videos, outs):
    assert len(out) > 100 and len(np.unique(out[:, 1])) >= 3, name
    assert_same_rows(reference.track_video(dets, PARAMS), out, name)


def test_reference_rows_equal_with_other_settings_uv_maps_and_no_features():
  """Hard scene with a shot cut; n_init 1, a ridge, a short history and max_age; UV maps; and the
  boxes-only case (appearance and pose of size 0)."""
  scene = synthetic.make_scene(synthetic.get_config('hard', num_frames=T, shot_cuts=1), seed=4)
  n = len(scene['frame'])
  uv = np.random.default_rng(0).random((n, 4, 3, 3)).astype(np.float32)
  uv[:, 3] = uv[:, 3] > 0.4
  params = PhalpParams(lmc=False, n_init=2, ridge=2.0, history=4, max_age=10, alpha0=0.3)
  cases = {'uv': scene_dets(scene, uv=uv),
           'boxes-only': scene_dets(scene, appe=np.zeros((n, 0)), pose=np.zeros((n, 0)))}
  for name, dets in cases.items():
    want = tracker.track_video(dets, params)
    assert len(want) > 100, name
    assert_same_rows(reference.track_video(dets, params), want, name)


@pytest.mark.parametrize('n_obs', [1, 2, 5])
def test_reference_location_predictor_equals_the_jax_one(n_obs):
  params = PhalpParams(ridge=0.5)
  rng = np.random.default_rng(n_obs)
  times = np.sort(rng.choice(20, n_obs, replace=False))
  locs = rng.normal(0, 1, (n_obs, 3)) * [20, 20, 0.1] + [300, 200, -2]
  track = reference.Track(appe=np.zeros(2), uv=None, bbox=np.array([0, 0, 40, 90.0]),
                          times=list(times), poses=[], locs=list(locs), loc_times=list(times),
                          loc_shot=0)
  w = params.history
  valid = np.arange(w) >= w - n_obs
  hist_t = np.zeros(w, np.int32)
  hist_t[valid] = times
  hist = np.zeros((w, 3), np.float32)
  hist[valid] = locs
  for target in (20, 27):
    pred, interval = reference.predict_location(track, target, params)
    want = predict_location(jnp.asarray(hist), jnp.asarray(hist_t), jnp.asarray(valid),
                            jnp.int32(target), jnp.float32(90.0), params.knobs())
    np.testing.assert_allclose(pred, want[0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(interval, want[1], rtol=1e-4)


def test_reference_refuses_lmc():
  scene = synthetic.make_scene(synthetic.get_config('easy', num_frames=20), seed=0)
  with pytest.raises(ValueError, match='LMC'):
    reference.track_video(scene_dets(scene), PhalpParams(lmc=True))


def test_bench_phalp_prints_one_line_per_batch(capsys):
  out = bench.bench_phalp((1, 2), capacity=16, detections=4, frames=16, repeats=1,
                          reference=True)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == len(out) == 2
  for b, r in zip((1, 2), out):
    assert r['videos'] == b and r['frames'] == 16 and r['capacity'] == 16
    assert 2 <= r['usable_detections_per_frame'] <= 8
    assert r['ms_per_video_frame'] > 0 and r['reference_ms_per_video_frame'] > 0
    assert r['frames_per_s_per_video'] * b == pytest.approx(r['video_frames_per_s'])
    assert r['reference_rows_equal'] is True
