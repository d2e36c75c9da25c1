"""Synthetic people-tracking scenes with ground truth: the built-in tracking benchmark (DESIGN 9).

People are 3D points walking on a ground plane in front of a pinhole camera. Each frame they are
projected to boxes and turned into detections of the kind PHALP consumes (DESIGN 6): a box, a
confidence, an appearance embedding, a pose vector and a location ``(x, y, nearness)``. The
difficulty knobs of :class:`SceneConfig` add what breaks a box-IoU linker between adjacent frames
but leaves the cues PHALP uses intact:

* **occlusion**: people covered by nearer people's boxes beyond ``occlusion_threshold`` get no
  detection (crossings at different depths hide someone for a few to tens of frames); partial
  cover lowers the confidence and mixes the occluder's appearance into the embedding;
* **enter_exit**: the walking area is wider than the view, so people leave it and come back;
* **miss_rate** / **miss_burst**: missed detections in runs of a few frames (a Markov chain);
* **false_positive_rate**: random boxes with random features, confidences overlapping the true ones;
* **box_noise**, **appearance_noise**, **pose_noise**, **nearness_noise**: detector noise;
* **lookalike**: every identity's appearance is pulled towards one shared appearance;
* **shot_cuts**: the camera jumps (new azimuth, look-at point, height and zoom), so every image
  position and size changes at once while identities persist.

Appearance is an identity vector plus a view-dependent term (the person's heading relative to the
camera), unit-normalised; pose is the cosine/sine of that relative heading (global orientation)
followed by a smooth per-person vector (a bias plus sinusoids); nearness is ``log(1 / z)`` of the
root (pelvis) depth. Everything is a deterministic function of ``(config, seed)`` and each part
(motion, cameras, appearance, detector noise, ...) draws from its own random stream, so changing
one knob leaves the rest of a scene unchanged.

Output of :func:`make_scene`: a dict with the canonical per-video detection keys (see
:data:`CANONICAL_KEYS`; ``gt_id`` is the 0-based identity, -1 for false positives), plus
``gt_tracks`` (rows ``frame, id, x, y, w, h`` of every person inside the image, occluded and missed
ones included, as in MOT ground truth), ``gt_visibility`` (visible fraction of each such row) and
``info``. :func:`write_benchmark` writes ``{i:04d}.npz`` (canonical keys only) plus MOT-style
``gt/{i:04d}.txt`` per video. Command line::

    python -m phalp_jax.synthetic OUTPUT_DIR --preset hard --num_videos 20 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from phalp_jax import io

CANONICAL_KEYS = ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca', 'gt_id', 'image_size', 'shot')
GT_DIR = 'gt'
MANIFEST_FILE = 'benchmark.json'

# Random streams, one per part of a scene (a SeedSequence spawn key each).
_STREAM_TAG = 0x7068616C  # 'phal'
(_S_PEOPLE, _S_MOTION, _S_CAMERA, _S_APPEARANCE, _S_POSE, _S_MISS, _S_NOISE, _S_FP,
 _S_ORDER) = range(9)

_PELVIS = 0.53          # root height as a fraction of body height
_LOOK_AT_HEIGHT = 1.0   # metres: cameras aim at this height above the stage centre
_MIN_DEPTH = 1.0        # metres: points nearer than this (or behind the camera) are not visible
_GT_MIN_IN_IMAGE = 0.2  # a person is ground truth when this fraction of the box is in the image
_DET_MIN_IN_IMAGE = 0.5  # ... and can be detected when this fraction is


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  """Knobs of one synthetic scene (defaults = the 'medium' preset)."""
  num_frames: int = 200
  people: int = 6
  image_size: tuple[int, int] = (720, 1280)  # (h, w) pixels
  focal: float = 1000.0                       # pixels, camera 0 (each cut zooms 1.1-1.3x)
  fps: float = 30.0
  appearance_dim: int = 64
  pose_dim: int = 24
  appearance_noise: float = 0.2   # norm of the per-detection noise on a unit identity embedding
  view_change: float = 0.3        # norm of the view-dependent (relative heading) appearance term
  lookalike: float = 0.3          # 0..1: mixes every identity towards one shared appearance
  pose_noise: float = 0.1         # std of per-detection noise on each pose dimension
  box_noise: float = 0.04         # std of box position / log-size noise, fraction of the box size
  nearness_noise: float = 0.05    # std of noise on nearness log(1/z) (~ relative depth error)
  miss_rate: float = 0.05         # stationary fraction of detectable people that are missed
  miss_burst: float = 3.0         # mean length in frames of a run of misses
  false_positive_rate: float = 0.3  # mean false detections per frame (Poisson)
  occlusion: bool = True
  occlusion_threshold: float = 0.5  # covered fraction above which a person is not detected
  shot_cuts: int = 1
  enter_exit: bool = True
  walk_speed: float = 1.4         # m/s, mean walking speed
  depth_range: tuple[float, float] = (4.5, 14.0)  # metres in front of camera 0
  # Metres above the ground of camera 0 (each cut: 0.75-1.5x this). Near the root (pelvis) height,
  # every root projects near the horizon line, so a root's image height no longer tells its depth
  # and only nearness separates people crossing at different depths.
  camera_height: float = 2.0
  seed: int = 0

  def __post_init__(self):
    checks = {
        'num_frames': self.num_frames >= 2, 'people': self.people >= 1,
        'image_size': len(self.image_size) == 2 and min(self.image_size) >= 16,
        'focal': self.focal > 0, 'fps': self.fps > 0, 'appearance_dim': self.appearance_dim >= 2,
        'pose_dim': self.pose_dim >= 2, 'appearance_noise': self.appearance_noise >= 0,
        'view_change': self.view_change >= 0, 'lookalike': 0 <= self.lookalike <= 1,
        'pose_noise': self.pose_noise >= 0, 'box_noise': 0 <= self.box_noise < 0.5,
        'nearness_noise': self.nearness_noise >= 0, 'miss_rate': 0 <= self.miss_rate < 1,
        'miss_burst': self.miss_burst >= 1, 'false_positive_rate': self.false_positive_rate >= 0,
        'occlusion_threshold': 0 < self.occlusion_threshold <= 1,
        'shot_cuts': 0 <= self.shot_cuts and 11 * self.shot_cuts + 10 <= self.num_frames,
        'walk_speed': self.walk_speed >= 0,
        'depth_range': (len(self.depth_range) == 2
                        and 2 <= self.depth_range[0] < self.depth_range[1]),
        'camera_height': 0.3 <= self.camera_height <= 10,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
      raise ValueError(f'SceneConfig: invalid {bad[0]}={getattr(self, bad[0])!r}')


PRESETS: dict[str, SceneConfig] = {
    # IoU linking between adjacent frames is almost enough: few people, no occlusion, clean boxes.
    'easy': SceneConfig(people=3, appearance_noise=0.1, view_change=0.2, lookalike=0.0,
                        pose_noise=0.05, box_noise=0.02, nearness_noise=0.03, miss_rate=0.0,
                        false_positive_rate=0.0, occlusion=False, shot_cuts=0, enter_exit=False),
    'medium': SceneConfig(),
    # Crowded crossings, exits and re-entries, bursts of misses, false positives, 3 cuts and
    # look-alikes: IoU linking splits each identity ~7 ways; linking by appearance alone keeps
    # ~95% of each identity's detections together (tests/test_phalp_synthetic.py).
    'hard': SceneConfig(people=10, appearance_noise=0.25, view_change=0.3, lookalike=0.6,
                        pose_noise=0.15, box_noise=0.06, nearness_noise=0.08, miss_rate=0.1,
                        miss_burst=4.0, false_positive_rate=1.0, occlusion=True,
                        occlusion_threshold=0.4, shot_cuts=3, enter_exit=True),
    # People crossing at different depths before an eye-level camera (roots all project near the
    # horizon, so a root's image height says nothing of its depth), jittery 2D boxes, look-alike
    # appearance and bursts of misses: the scene where nearness has to separate people.
    'crossing': SceneConfig(people=8, appearance_noise=0.25, view_change=0.3, lookalike=0.85,
                            pose_noise=0.25, box_noise=0.12, nearness_noise=0.02, miss_rate=0.1,
                            miss_burst=5.0, false_positive_rate=0.3, occlusion=True,
                            occlusion_threshold=0.6, shot_cuts=0, enter_exit=True,
                            depth_range=(3.0, 18.0), camera_height=0.95),
}


def get_config(config: SceneConfig | str = 'medium', **overrides: Any) -> SceneConfig:
  """A preset by name (or a config) with field overrides: ``get_config('hard', people=4)``."""
  if isinstance(config, str):
    if config not in PRESETS:
      raise ValueError(f'preset: expected one of {sorted(PRESETS)}, got {config!r}')
    config = PRESETS[config]
  return dataclasses.replace(config, **overrides) if overrides else config


def _stream(seed: Sequence[int], key: int) -> np.random.Generator:
  """Random stream ``key`` of a scene. The tag keeps these draws apart from other generators
  seeded with the same numbers, the length tells ``7`` from ``(7, 0)`` (SeedSequence pads with
  zeros)."""
  entropy = [_STREAM_TAG, len(seed), *seed]
  return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(key,)))


def _wrap(a: np.ndarray) -> np.ndarray:
  return (a + np.pi) % (2 * np.pi) - np.pi


def _unit(v: np.ndarray) -> np.ndarray:
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------
# World: people walking on the ground plane, cameras per shot.


def _walk(cfg: SceneConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Ground positions ``[T, P, 2]`` (x, z) and headings ``[T, P]`` (0 = away from camera 0).

  A smooth random walk of the heading at a per-person speed, steered back once a person leaves
  the walking area: the area fills 80% of camera 0's view, or 110% of it with ``enter_exit`` (so
  people wander out of the image for a second or so and come back)."""
  t_n, p_n, dt = cfg.num_frames, cfg.people, 1.0 / cfg.fps
  z_lo, z_hi = cfg.depth_range
  z_mid, z_half = 0.5 * (z_lo + z_hi), 0.5 * (z_hi - z_lo)
  tan_h = cfg.image_size[1] / 2 / cfg.focal
  fill = 1.1 if cfg.enter_exit else 0.8
  # Outside the area when |x| > fill * (z * tan_h - 0.4) or |z - z_mid| > z_half (z >= 2 m).
  slope, inset = fill * tan_h, fill * 0.4

  z = rng.uniform(z_lo, z_hi, p_n)
  x = rng.uniform(-0.9, 0.9, p_n) * (slope * z - inset)
  heading = rng.uniform(-np.pi, np.pi, p_n)
  speed = np.clip(rng.normal(cfg.walk_speed, 0.25 * cfg.walk_speed, p_n), 0.2 * cfg.walk_speed,
                  1.8 * cfg.walk_speed)
  # Complex numbers: position x + iz, direction sin(heading) + i cos(heading); a turn by angle a
  # multiplies the direction by exp(-ia) (heading is measured from +z towards +x).
  turn = np.exp(-1j * rng.normal(0.0, 0.8 * math.sqrt(dt), (t_n, p_n)))  # wander ~0.8 rad/sqrt(s)
  step = speed * dt * np.exp(rng.normal(0.0, 0.03, (t_n, p_n)))
  steer_left, steer_right = np.exp(3j * dt), np.exp(-3j * dt)  # steering back at 3 rad/s
  target = 1j * z_mid
  pos = np.empty((t_n, p_n), dtype=np.complex128)
  direction = np.empty((t_n, p_n), dtype=np.complex128)
  p, d = x + 1j * z, np.sin(heading) + 1j * np.cos(heading)
  for t in range(t_n):
    pos[t], direction[t] = p, d
    outside = (np.abs(p.real) - slope * p.imag > -inset) | (np.abs(p.imag - z_mid) > z_half)
    left = ((target - p) * d.conjugate()).imag > 0  # the target lies counter-clockwise of d
    d = d * np.where(outside, np.where(left, steer_left, steer_right), turn[t])
    p = p + step[t] * d
  return np.stack([pos.real, pos.imag], -1), np.arctan2(direction.real, direction.imag)


def _cameras(cfg: SceneConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Cut frames ``[K]`` and cameras ``[K + 1, 6]``: (azimuth, distance, height, look-at offset,
  focal, pitch). Camera 0 sits at the world origin looking down +z at the walking area's centre;
  each cut moves to a new azimuth around the area (10-50 degrees away), distance, height, a
  look-at point 1.2-2.5 m to the other side and a 1.1-1.3x zoom (in or out) from the last camera."""
  t_n, k_n = cfg.num_frames, cfg.shot_cuts
  z_mid = 0.5 * sum(cfg.depth_range)
  cams = [(0.0, z_mid, cfg.camera_height, 0.0, cfg.focal)]
  for _ in range(k_n):
    prev = cams[-1][0]
    azimuth = prev
    while abs(azimuth - prev) < math.radians(10):
      azimuth = rng.uniform(-math.radians(25), math.radians(25))
    # Look-at point to the other side of the previous one, zoom towards the base focal length.
    side = -math.copysign(1.0, cams[-1][3]) if cams[-1][3] else rng.choice([-1.0, 1.0])
    zoom = (1.0 if cams[-1][4] < cfg.focal else -1.0) * rng.uniform(math.log(1.1), math.log(1.3))
    cams.append((azimuth, z_mid * rng.uniform(0.95, 1.25),
                 rng.uniform(0.75 * cfg.camera_height, 1.5 * cfg.camera_height),
                 side * rng.uniform(1.2, 2.5), cams[-1][4] * math.exp(zoom)))
  cams = np.array(cams, dtype=np.float64)
  pitch = np.arctan2(cams[:, 2] - _LOOK_AT_HEIGHT, cams[:, 1])
  cams = np.concatenate([cams, pitch[:, None]], axis=1)
  # Cuts at least 10 frames apart and from the ends: sorted draws from a shrunk range, spread out.
  gap = 10
  cuts = np.sort(rng.choice(t_n - gap * (k_n + 1) + 1, size=k_n, replace=False))
  cuts = cuts + gap * np.arange(1, k_n + 1)
  return cuts.astype(np.int64), cams


def _project(points: np.ndarray, cams: np.ndarray, cfg: SceneConfig
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pinhole projection of world points ``[T, P, 3]`` (x, up, z) with per-frame cameras
  ``[T, 6]``: pixel u, v and camera depth, each ``[T, P]``."""
  azimuth, dist, height, offset, focal, pitch = (cams[:, i] for i in range(6))
  z_mid = 0.5 * sum(cfg.depth_range)
  sa, ca, sp, cp = np.sin(azimuth), np.cos(azimuth), np.sin(pitch), np.cos(pitch)
  zeros = np.zeros_like(sa)
  right = np.stack([ca, zeros, sa], -1)
  forward_h = np.stack([-sa, zeros, ca], -1)
  up = np.stack([zeros, np.ones_like(sa), zeros], -1)
  look_at = np.stack([offset * ca, zeros, z_mid + offset * sa], -1)
  centre = look_at - dist[:, None] * forward_h
  centre[:, 1] = height
  forward = cp[:, None] * forward_h - sp[:, None] * up
  up_cam = sp[:, None] * forward_h + cp[:, None] * up
  rel = points - centre[:, None, :]
  x_c = np.einsum('tpc,tc->tp', rel, right)
  y_c = -np.einsum('tpc,tc->tp', rel, up_cam)
  z_c = np.einsum('tpc,tc->tp', rel, forward)
  safe = np.where(z_c > 1e-3, z_c, 1e-3)
  img_h, img_w = cfg.image_size
  return img_w / 2 + focal[:, None] * x_c / safe, img_h / 2 + focal[:, None] * y_c / safe, z_c


def _clip_boxes(box: np.ndarray, img_h: int, img_w: int) -> np.ndarray:
  """(x, y, w, h) boxes clipped to the image (width/height may become <= 0 when outside)."""
  x0 = np.clip(box[..., 0], 0, img_w)
  y0 = np.clip(box[..., 1], 0, img_h)
  x1 = np.clip(box[..., 0] + box[..., 2], 0, img_w)
  y1 = np.clip(box[..., 1] + box[..., 3], 0, img_h)
  return np.stack([x0, y0, x1 - x0, y1 - y0], -1)


def _coverage(box: np.ndarray, depth: np.ndarray, present: np.ndarray) -> np.ndarray:
  """``[T, P, P]``: fraction of box i covered by box j when j is present and nearer than i."""
  x0, y0 = box[..., 0], box[..., 1]
  x1, y1 = x0 + box[..., 2], y0 + box[..., 3]
  iw = np.minimum(x1[:, :, None], x1[:, None, :]) - np.maximum(x0[:, :, None], x0[:, None, :])
  ih = np.minimum(y1[:, :, None], y1[:, None, :]) - np.maximum(y0[:, :, None], y0[:, None, :])
  inter = np.maximum(iw, 0) * np.maximum(ih, 0)
  area = np.maximum(box[..., 2] * box[..., 3], 1e-9)
  nearer = (depth[:, None, :] < depth[:, :, None]) & present[:, None, :] & present[:, :, None]
  return np.where(nearer, inter / area[:, :, None], 0.0)


def _miss_runs(cfg: SceneConfig, rng: np.random.Generator) -> np.ndarray:
  """``[T, P]`` bool: a two-state Markov chain per person, missed a fraction ``miss_rate`` of
  frames in runs of mean length ``miss_burst``."""
  t_n, p_n = cfg.num_frames, cfg.people
  if cfg.miss_rate == 0:
    return np.zeros((t_n, p_n), dtype=bool)
  stay = 1.0 - 1.0 / cfg.miss_burst
  start = min(1.0, cfg.miss_rate / (cfg.miss_burst * (1.0 - cfg.miss_rate)))
  u = rng.random((t_n, p_n))
  missed = np.empty((t_n, p_n), dtype=bool)
  state = rng.random(p_n) < cfg.miss_rate
  for t in range(t_n):
    missed[t] = state
    state = np.where(state, u[t] < stay, u[t] < start)
  return missed


# ---------------------------------------------------------------------------------------------
# The scene.


def make_scene(config: SceneConfig | str = 'medium', seed: int | Sequence[int] | None = None
               ) -> dict[str, Any]:
  """One synthetic video's detections and ground truth (see the module docstring).

  ``seed`` (an int or a sequence of ints such as ``(seed, video_index)``) defaults to
  ``config.seed``. Detections are sorted by frame, in random order within a frame."""
  cfg = get_config(config)
  seed = [int(s) for s in (np.atleast_1d(cfg.seed if seed is None else seed))]
  t_n, p_n = cfg.num_frames, cfg.people
  img_h, img_w = cfg.image_size
  d_a, d_p = cfg.appearance_dim, cfg.pose_dim
  frames = np.arange(t_n)

  # People: body height, box width ratio; walk; cameras per shot.
  rng = _stream(seed, _S_PEOPLE)
  body = rng.uniform(1.5, 1.9, p_n)
  width_ratio = rng.uniform(0.35, 0.45, p_n)
  ground, heading = _walk(cfg, _stream(seed, _S_MOTION))
  cuts, cams = _cameras(cfg, _stream(seed, _S_CAMERA))
  shot = np.searchsorted(cuts, frames, side='right').astype(np.int64)
  cam_t = cams[shot]

  def world(frac):
    return np.stack([ground[..., 0], np.broadcast_to(frac * body, (t_n, p_n)), ground[..., 1]], -1)

  u_head, v_head, z_head = _project(world(1.0), cam_t, cfg)
  u_root, v_root, z_root = _project(world(_PELVIS), cam_t, cfg)
  _, v_feet, z_feet = _project(world(0.0), cam_t, cfg)
  in_front = (np.minimum(z_head, z_feet) > _MIN_DEPTH)
  box_h = np.where(in_front, v_feet - v_head, 1.0)
  box_w = width_ratio * box_h
  box = np.stack([u_root - box_w / 2, v_head, box_w, box_h], -1)
  clipped = _clip_boxes(box, img_h, img_w)
  in_frac = np.where(in_front, clipped[..., 2].clip(0) * clipped[..., 3].clip(0)
                     / np.maximum(box_w * box_h, 1e-9), 0.0)
  present = in_frac >= _GT_MIN_IN_IMAGE
  cover = _coverage(clipped, z_root, present)
  covered = np.minimum(cover.sum(-1), 1.0)
  occ = covered if cfg.occlusion else np.zeros_like(covered)
  occluded = occ > cfg.occlusion_threshold
  missed = _miss_runs(cfg, _stream(seed, _S_MISS))
  detected = present & (in_frac >= _DET_MIN_IN_IMAGE) & ~occluded & ~missed

  # Appearance per (frame, person): identity + view term (relative heading), lookalike-mixed.
  rng = _stream(seed, _S_APPEARANCE)
  raw = _unit(rng.normal(size=(p_n + 1, 3, d_a)))  # row p_n: the shared look-alike appearance
  shared = raw[p_n, 0]
  ident = (1 - cfg.lookalike) * raw[:p_n] + cfg.lookalike * raw[p_n]
  rel_heading = _wrap(heading - cam_t[:, None, 0])
  view = np.stack([np.cos(rel_heading), np.sin(rel_heading)], -1)
  appe_clean = ident[None, :, 0] + cfg.view_change * np.einsum('tpk,pkd->tpd', view, ident[:, 1:])
  appe_clean = _unit(appe_clean)
  if cfg.occlusion:  # partial cover: the visible pixels of the occluder leak into the embedding
    appe_clean = (1 - occ)[..., None] * appe_clean + np.einsum('tij,tjd->tid', cover, appe_clean)

  # Pose: global orientation relative to the camera + a smooth per-person vector.
  rng = _stream(seed, _S_POSE)
  n_sin = 3
  bias = rng.normal(size=(p_n, d_p - 2))
  amp = rng.uniform(0.0, 0.5, (n_sin, p_n, d_p - 2))
  freq = rng.uniform(0.1, 1.0, (n_sin, p_n, d_p - 2))
  phase = rng.uniform(0, 2 * np.pi, (n_sin, p_n, d_p - 2))
  t_sec = (frames / cfg.fps)[None, :, None, None]
  smooth = bias + (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t_sec + phase[:, None])).sum(0)
  pose_clean = np.concatenate([view, smooth], -1)

  # True detections with detector noise.
  rng = _stream(seed, _S_NOISE)
  t_idx, p_idx = np.nonzero(detected)
  n_true = t_idx.size
  b = clipped[t_idx, p_idx]
  size = b[:, 2:4]
  noisy = np.concatenate([b[:, :2] + cfg.box_noise * size * rng.normal(size=(n_true, 2)),
                          size * np.exp(cfg.box_noise * rng.normal(size=(n_true, 2)))], 1)
  det_box = _clip_boxes(noisy, img_h, img_w)
  det_box[:, 2:] = np.maximum(det_box[:, 2:], 1.0)
  det_box[:, :2] = np.minimum(det_box[:, :2], np.array([img_w, img_h]) - det_box[:, 2:])
  o, f = occ[t_idx, p_idx], in_frac[t_idx, p_idx]
  conf = np.clip(rng.normal(0.9, 0.06, n_true) - 0.3 * o - 0.2 * (1 - f), 0.05, 0.999)
  appe = _unit(appe_clean[t_idx, p_idx]
               + cfg.appearance_noise / math.sqrt(d_a) * rng.normal(size=(n_true, d_a)))
  pose = pose_clean[t_idx, p_idx] + cfg.pose_noise * rng.normal(size=(n_true, d_p))
  root_px = np.stack([u_root[t_idx, p_idx], v_root[t_idx, p_idx]], -1)
  loca = np.concatenate([
      root_px + cfg.box_noise * size[:, 1:2] * rng.normal(size=(n_true, 2)),
      (-np.log(z_root[t_idx, p_idx]) + cfg.nearness_noise * rng.normal(size=n_true))[:, None]], 1)

  # False positives: person-shaped random boxes with random features.
  rng = _stream(seed, _S_FP)
  per_frame = rng.poisson(cfg.false_positive_rate, t_n)
  fp_t = np.repeat(frames, per_frame)
  n_fp = fp_t.size
  fp_z = rng.uniform(0.8 * cfg.depth_range[0], cfg.depth_range[1], n_fp)
  fp_h = np.minimum(cams[shot[fp_t], 4] * rng.uniform(1.5, 1.9, n_fp) / fp_z, img_h - 1.0)
  fp_w = fp_h * rng.uniform(0.3, 0.5, n_fp)
  fp_box = np.stack([rng.uniform(0, 1, n_fp) * (img_w - fp_w),
                     rng.uniform(0, 1, n_fp) * (img_h - fp_h),
                     fp_w, fp_h], -1)
  fp_conf = np.clip(rng.normal(0.55, 0.15, n_fp), 0.05, 0.999)
  fp_appe = _unit(cfg.lookalike * shared + (1 - cfg.lookalike) * _unit(rng.normal(size=(n_fp, d_a)))
                  + cfg.appearance_noise / math.sqrt(d_a) * rng.normal(size=(n_fp, d_a)))
  fp_angle = rng.uniform(-np.pi, np.pi, n_fp)
  fp_pose = np.concatenate([np.stack([np.cos(fp_angle), np.sin(fp_angle)], -1),
                            rng.normal(size=(n_fp, d_p - 2))], 1)
  fp_pose += cfg.pose_noise * rng.normal(size=(n_fp, d_p))
  fp_loca = np.stack([fp_box[:, 0] + fp_w / 2, fp_box[:, 1] + _PELVIS * fp_h,
                      -np.log(fp_z) + cfg.nearness_noise * rng.normal(size=n_fp)], -1)

  # Merge, sort by frame with a random order within each frame (the order must not leak ids).
  frame = np.concatenate([t_idx, fp_t])
  order = np.lexsort((_stream(seed, _S_ORDER).random(frame.size), frame))
  f32 = np.float32
  scene = {
      'frame': frame[order].astype(np.int64),
      'bbox': np.concatenate([det_box, fp_box])[order].astype(f32),
      'conf': np.concatenate([conf, fp_conf])[order].astype(f32),
      'appe': np.concatenate([appe, fp_appe])[order].astype(f32),
      'pose': np.concatenate([pose, fp_pose])[order].astype(f32),
      'loca': np.concatenate([loca, fp_loca])[order].astype(f32),
      'gt_id': np.concatenate([p_idx, np.full(n_fp, -1)])[order].astype(np.int64),
      'image_size': np.array([img_h, img_w], dtype=np.int64),
      'shot': shot,
  }
  g_t, g_p = np.nonzero(present)
  scene['gt_tracks'] = np.concatenate([np.stack([g_t, g_p], -1), clipped[g_t, g_p]], 1)
  scene['gt_visibility'] = (in_frac * (1 - covered))[g_t, g_p].astype(f32)
  scene['info'] = {
      'config': dataclasses.asdict(cfg), 'seed': seed, 'fps': cfg.fps, 'num_frames': t_n,
      'num_people': p_n, 'camera': shot.copy(), 'cut_frames': cuts,
      'cameras': cams,  # [K + 1, 6]: azimuth, distance, height, look-at offset, focal, pitch
      'ground': ground, 'heading': heading, 'depth': z_root, 'box': box,
      'in_image': in_frac, 'covered': covered, 'occluded': occluded & present,
      'missed': missed & present, 'detected': detected,
  }
  return scene


# ---------------------------------------------------------------------------------------------
# Files.


def save_scene_npz(scene: dict[str, Any], path: str) -> None:
  """Writes the canonical detection keys of ``scene`` to ``path`` with ``np.savez``, atomically."""
  missing = [k for k in CANONICAL_KEYS if k not in scene]
  if missing:
    raise ValueError(f'scene: missing canonical keys {missing}')
  arrays = {k: np.asarray(scene[k]) for k in CANONICAL_KEYS}
  io.atomic_write(path, lambda f: np.savez(f, **arrays))


def gt_mot_lines(scene: dict[str, Any]) -> str:
  """MOT-style ground truth ``frame,id,x,y,w,h,1,1,1`` with 1-based frame and id (MOT
  convention: ``frame = frame_index + 1``, ``id = gt_id + 1``)."""
  rows = scene['gt_tracks']
  return ''.join(f'{int(r[0]) + 1},{int(r[1]) + 1},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},'
                 '1,1,1\n' for r in rows)


def save_gt_txt(scene: dict[str, Any], path: str) -> None:
  """Writes :func:`gt_mot_lines` to ``path`` atomically."""
  text = gt_mot_lines(scene).encode()
  io.atomic_write(path, lambda f: f.write(text))


def write_benchmark(output_dir: str, preset: SceneConfig | str = 'hard', num_videos: int = 10,
                    seed: int = 0, progress: bool = True) -> list[str]:
  """Writes ``num_videos`` scenes (video i from seed ``(seed, i)``) as ``{i:04d}.npz`` plus
  ``gt/{i:04d}.txt`` and a ``benchmark.json`` manifest; returns the npz paths."""
  from tqdm.auto import tqdm
  cfg = get_config(preset)
  os.makedirs(os.path.join(output_dir, GT_DIR), exist_ok=True)
  paths = []
  for i in tqdm(range(num_videos), desc='synthetic tracking scenes', disable=not progress):
    scene = make_scene(cfg, seed=(seed, i))
    path = os.path.join(output_dir, f'{i:04d}.npz')
    save_scene_npz(scene, path)
    save_gt_txt(scene, os.path.join(output_dir, GT_DIR, f'{i:04d}.txt'))
    paths.append(path)
  manifest = {'preset': preset if isinstance(preset, str) else None,
              'config': dataclasses.asdict(cfg), 'seed': seed, 'num_videos': num_videos,
              'videos': [os.path.basename(p) for p in paths],
              'gt_format': 'frame,id,x,y,w,h,1,1,1 (1-based frame and id = gt_id + 1)'}
  text = json.dumps(manifest, indent=2).encode()
  io.atomic_write(os.path.join(output_dir, MANIFEST_FILE), lambda f: f.write(text))
  return paths


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('output_dir')
  parser.add_argument('--preset', default='hard', choices=sorted(PRESETS))
  parser.add_argument('--num_videos', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  paths = write_benchmark(args.output_dir, args.preset, args.num_videos, args.seed)
  print(f'wrote {len(paths)} scenes to {args.output_dir}')


if __name__ == '__main__':
  main()
