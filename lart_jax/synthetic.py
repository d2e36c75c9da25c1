"""Synthetic LART tracklets in which other people matter: the built-in action benchmark (DESIGN 7, 9).

People stand, sit, lie or move on a ground plane in front of a pinhole camera. Each person's SMPL
joint angles come from action-conditioned dynamics (postures: stand, sit, lie, bend, crouch;
periodic motions: walk, run, dance, jump, hand clap, ...; per-person jitter of frequency, phase,
amplitude and posture), are turned into rotation matrices and 45 joints by forward kinematics over
the SMPL skeleton, projected to boxes, and written per track in the released LART layout. Every
person carries several AVA labels at once (a posture plus an action). The classes come in three
groups, which the benchmark reports separately:

* **pose classes** (stand, sit, lie/sleep, bend/bow, crouch/kneel, walk, run/jog, dance,
  jump/leap, hand clap): decidable from the person's own pose sequence;
* **interaction classes** (:data:`INTERACTION_IDS`: fight/hit, hand shake, hug, talk to, watch a
  person): two people facing each other at the right distance, with synchronised or mirrored
  motion. Each is paired with a look-alike situation in which the person of interest's own pose,
  motion, location and orientation have exactly the same distribution (hand shake vs hand wave
  alone, hug vs carry/hold, fight vs martial art alone, talk to vs two people gesturing back to
  back or side by side, watch a person vs standing with the performer beside or behind), so only
  the other people's location, orientation and motion tell them apart;
* **scene classes** (:data:`SCENE_IDS`: swim, drive, play musical instrument, ride): the pose is
  the same as a look-alike (lie/sleep, sit, stand, sit), but the appearance vector carries a fixed
  scene/object signature.

Exactness of the look-alikes: units (one person, or two people linked by an interaction) are
placed with uniform centres on a torus much larger than the view, with a footprint that is the
same for an interaction and its look-alike (a solo look-alike keeps a virtual partner), so every
visible person's position and heading are uniform and independent of the unit's variant;
variants are drawn so that interaction and look-alike persons are equally frequent (a pose-only
model is at chance); missed detections do not depend on the scene. A person is *annotated*
(``has_gt`` > 0 possible) only while at least its unit's partner distance inside the view, so
an annotated person's partner (or the look-alike's neighbour) is always in view; the margin is
the same for an interaction and its look-alike, so this keeps the ambiguity exact. People nearer
the edge are tracked as context for the others but never labelled (``has_gt`` 0): an evaluation
should score the tracks at their ``has_gt == 2`` keyframes, which are the rows of the ground-truth
CSV.

Output of :func:`make_video`: a list of track dicts, one per visible person, with these keys
(``T`` = frames of the track's span, consecutive; gaps are ``has_detection`` False):

=======================  ==============  ======================================================
key                      shape / type    meaning
=======================  ==============  ======================================================
``fid``                  [T] int64       frame number in the video
``pose_shape``           [T, 1, 229]     207 body pose (23 joints x 3x3, SMPL order) + 9 global
                                         orientation (3x3, camera frame) + 10 betas + 3 location
                                         (camera translation of the pelvis, metres)
``3d_joints``            [T, 1, 45, 3]   joints relative to the pelvis, camera axes (x right,
                                         y down, z forward); add ``camera`` for camera coordinates
``camera``               [T, 1, 3]       pelvis translation in the camera frame (as pose_shape)
``has_detection``        [T, 1] bool     detected in that frame (missed frames hold the last
                                         detected features)
``action_label_gt``      [T, 1, 80]      multi-hot over AVA ids (column i = id i + 1); exact at
                                         ground-truth frames, a noisy copy at pseudo-label frames
``has_gt``               [T, 1] int64    2 at keyframes (1 Hz: frames k * fps, k >= 1) while
                                         annotated, 1 at pseudo-labelled detected annotated
                                         frames, else 0
``frame_name``           list of T str   ``{video_id}/{frame:06d}.jpg``
``frame_bbox``           [T, 1, 4]       detector box x, y, w, h in pixels
``frame_size``           [T, 1, 2]       image (h, w)
``frame_conf``           [T, 1]          detector confidence (0 where missed)
``apperance_emb``        [T, 1, Da]      appearance feature (the released loader's key name, its
                                         spelling; identity + scene signature + noise)
``video_id``, ``track_id``  str          names
``synthetic``            dict            ground truth of the generator: family, variant, style,
                                         labels, partner track id (not part of the LART layout)
=======================  ==============  ======================================================

:func:`write_dataset` writes ``{split}/{video_id}/{track_id}.pkl`` per track plus the AVA files
``{split}_gt.csv`` (keyframe boxes and labels; timestamp = keyframe / fps seconds),
``labelmap.pbtxt`` and an empty ``{split}_excluded_timestamps.csv``. Command line::

    python -m lart_jax.synthetic --output DIR --train 200 --val 50 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import types
from collections.abc import Sequence
from typing import Any

import numpy as np

from lart_jax import ava
from phalp_jax import io as phalp_io
from phalp_jax import synthetic as phalp_synthetic

# ---------------------------------------------------------------------------------------------
# Layout constants (shared with lart_jax/tracklets.py)
# ---------------------------------------------------------------------------------------------

FID, POSE, JOINTS, CAMERA = 'fid', 'pose_shape', '3d_joints', 'camera'
HAS_DETECTION, LABELS, HAS_GT = 'has_detection', 'action_label_gt', 'has_gt'
FRAME_NAME, FRAME_BBOX, FRAME_SIZE, FRAME_CONF = 'frame_name', 'frame_bbox', 'frame_size', 'frame_conf'
APPEARANCE_KEY = 'apperance_emb'
VIDEO_ID, TRACK_ID, INFO_KEY = 'video_id', 'track_id', 'synthetic'
TRACK_KEYS = (FID, POSE, JOINTS, CAMERA, HAS_DETECTION, LABELS, HAS_GT, FRAME_NAME, FRAME_BBOX,
              FRAME_SIZE, FRAME_CONF, APPEARANCE_KEY)

POSE_DIM, NUM_JOINTS, NUM_AVA_LABELS = 229, 45, 80
BODY_POSE, GLOBAL_ORIENT, BETAS, LOCATION = slice(0, 207), slice(207, 216), slice(216, 226), \
    slice(226, 229)
GT, PSEUDO, NONE = 2, 1, 0

GT_CSV, LABELMAP, EXCLUSIONS = '{split}_gt.csv', 'labelmap.pbtxt', '{split}_excluded_timestamps.csv'
INFO_JSON = '{split}_info.json'

# AVA ids (all inside ava.EVALUATED_IDS).
BEND, CROUCH, DANCE, JUMP, LIE, MARTIAL_ART, RUN, SIT, STAND, SWIM, WALK = \
    1, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14
CARRY, DRIVE, INSTRUMENT, RIDE = 17, 28, 41, 49
FIGHT, CLAP, SHAKE, WAVE, HUG, TALK, WATCH = 64, 67, 68, 69, 70, 79, 80

INTERACTION_IDS: tuple[int, ...] = (FIGHT, SHAKE, HUG, TALK, WATCH)
SCENE_IDS: tuple[int, ...] = (SWIM, DRIVE, INSTRUMENT, RIDE)
# The solo classes whose own pose is identical to an interaction's (context decides them too).
LOOKALIKE_IDS: tuple[int, ...] = (MARTIAL_ART, CARRY, WAVE)
POSE_IDS: tuple[int, ...] = (BEND, CROUCH, DANCE, JUMP, LIE, RUN, SIT, STAND, WALK, CLAP)

# Families. Pose solos: style -> labels. Interactions: (style, distance range m, sync, labels of
# the interaction, labels of the look-alike, look-alike kind). Scenes: (style, labels, look-alike).
POSE_SOLOS: dict[str, tuple[int, ...]] = {
    'stand': (STAND,), 'sit': (SIT,), 'lie': (LIE,), 'bend': (BEND,), 'crouch': (CROUCH,),
    'walk': (WALK,), 'run': (RUN,), 'dance': (DANCE,), 'jump': (JUMP,), 'clap': (STAND, CLAP)}
INTERACTIONS: dict[str, tuple] = {
    'shake': ('arm_pump', (0.7, 0.85), 'same', (STAND, SHAKE), (STAND, WAVE), 'solo'),
    'hug': ('embrace', (0.3, 0.4), 'same', (STAND, HUG), (STAND, CARRY), 'solo'),
    'fight': ('punch', (1.0, 1.3), 'opposite', (STAND, FIGHT), (STAND, MARTIAL_ART), 'solo'),
    'talk': ('gesture', (1.0, 1.6), 'turns', (STAND, TALK), (STAND,), 'not_facing'),
    'watch': ('stand', (1.5, 2.5), 'none', (STAND, WATCH), (STAND,), 'not_watching'),
}
SCENES: dict[str, tuple] = {
    'drive': ('steer', (SIT, DRIVE), (SIT,)), 'ride': ('straddle', (SIT, RIDE), (SIT,)),
    'swim': ('stroke', (SWIM,), (LIE,)), 'instrument': ('strum', (STAND, INSTRUMENT), (STAND,)),
}
PERFORMERS = ('dance', 'clap', 'jump')  # what the watched person does
_SCENE_ORDER = tuple(SCENES)

_TAG = 0x6C617274  # 'lart': keeps these streams apart from other generators' seeds


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Knobs of the synthetic LART benchmark."""
  frames: tuple[int, int] = (64, 160)       # frames per video, inclusive range
  people: tuple[int, int] = (2, 6)          # visible people per video, inclusive range
  fps: float = 30.0
  image_size: tuple[int, int] = (720, 1280)  # (h, w) pixels
  focal: float = 1000.0                     # pixels (x0.9-1.1 per video)
  depth_range: tuple[float, float] = (4.0, 12.0)  # metres: visible ground band in front
  appearance_dim: int = 64
  appearance_noise: float = 0.5     # norm of the per-frame noise on a unit identity vector
  scene_strength: float = 1.0       # norm of the scene/object signature of scene classes
  pose_noise: float = 0.03          # rad, per-frame noise on each joint's axis-angle
  location_noise: float = 0.015     # relative depth noise of the location
  box_noise: float = 0.02           # box noise, fraction of the box size
  miss_rate: float = 0.05           # fraction of frames with a missed detection
  miss_burst: float = 3.0           # mean run length of misses, frames
  pseudo_label_rate: float = 0.5    # fraction of detected non-keyframes with a pseudo-label
  pseudo_label_noise: float = 0.1   # per positive drop / extra false positive probability
  pose_weight: float = 0.35         # share of units that are pose solos
  interaction_weight: float = 0.4   # ... interaction families (with their look-alikes)
  scene_weight: float = 0.25        # ... scene families (with their look-alikes)
  unit_gap: float = 1.0             # metres between the footprints of different units
  min_track_frames: int = 8         # shorter visible spans are not tracked

  def __post_init__(self):
    checks = {
        'frames': len(self.frames) == 2 and 2 * self.fps <= self.frames[0] <= self.frames[1],
        'people': len(self.people) == 2 and 1 <= self.people[0] < self.people[1],
        'fps': self.fps >= 1, 'image_size': len(self.image_size) == 2 and min(self.image_size) >= 64,
        'focal': self.focal > 0,
        'depth_range': len(self.depth_range) == 2 and 2 <= self.depth_range[0] < self.depth_range[1],
        'appearance_dim': self.appearance_dim >= len(SCENES),
        'appearance_noise': self.appearance_noise >= 0, 'scene_strength': self.scene_strength >= 0,
        'pose_noise': self.pose_noise >= 0, 'location_noise': self.location_noise >= 0,
        'box_noise': 0 <= self.box_noise < 0.5, 'miss_rate': 0 <= self.miss_rate < 1,
        'miss_burst': self.miss_burst >= 1, 'pseudo_label_rate': 0 <= self.pseudo_label_rate <= 1,
        'pseudo_label_noise': 0 <= self.pseudo_label_noise <= 1,
        'pose_weight': self.pose_weight >= 0, 'interaction_weight': self.interaction_weight >= 0,
        'scene_weight': (self.scene_weight >= 0 and
                         self.pose_weight + self.interaction_weight + self.scene_weight > 0),
        'unit_gap': self.unit_gap >= 0, 'min_track_frames': self.min_track_frames >= 1,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
      raise ValueError(f'SyntheticConfig: invalid {bad[0]}={getattr(self, bad[0])!r} '
                       '(frames needs at least 2 s of video; people needs min < max)')


# ---------------------------------------------------------------------------------------------
# Skeleton: SMPL's 24 joints plus 21 extra keypoints (45 in all), rest offsets in metres
# (body frame: x left, y up, z forward).
# ---------------------------------------------------------------------------------------------

(PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3, L_FOOT, R_FOOT,
 NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST,
 L_HAND, R_HAND) = range(24)
_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
_OFFSETS = np.array([
    (0, 0, 0), (0.06, -0.09, 0), (-0.06, -0.09, 0), (0, 0.11, -0.02), (0.04, -0.38, 0),
    (-0.04, -0.38, 0), (0, 0.13, 0), (0, -0.40, -0.04), (0, -0.40, -0.04), (0, 0.05, 0.02),
    (0, -0.05, 0.12), (0, -0.05, 0.12), (0, 0.21, -0.03), (0.08, 0.12, -0.02),
    (-0.08, 0.12, -0.02), (0, 0.09, 0.05), (0.10, 0.03, 0), (-0.10, 0.03, 0), (0.25, 0, 0),
    (-0.25, 0, 0), (0.25, 0, 0), (-0.25, 0, 0), (0.08, 0, 0), (-0.08, 0, 0)], dtype=np.float64)
# Extra keypoints: (parent joint, offset): nose, eyes, ears, toes and heels, five fingertips each.
_EXTRA = (
    (HEAD, (0, 0.03, 0.11)), (HEAD, (0.03, 0.06, 0.09)), (HEAD, (-0.03, 0.06, 0.09)),
    (HEAD, (0.07, 0.03, 0.0)), (HEAD, (-0.07, 0.03, 0.0)),
    (L_FOOT, (0.02, -0.02, 0.06)), (L_FOOT, (0.05, -0.02, 0.04)), (L_ANKLE, (0, -0.06, -0.06)),
    (R_FOOT, (-0.02, -0.02, 0.06)), (R_FOOT, (-0.05, -0.02, 0.04)), (R_ANKLE, (0, -0.06, -0.06)),
    *((L_HAND, (0.09, 0, dz)) for dz in (0.04, 0.02, 0.0, -0.02, -0.04)),
    *((R_HAND, (-0.09, 0, dz)) for dz in (0.04, 0.02, 0.0, -0.02, -0.04)))
_EXTRA_PARENTS = np.array([p for p, _ in _EXTRA])
_EXTRA_OFFSETS = np.array([o for _, o in _EXTRA], dtype=np.float64)
assert 24 + len(_EXTRA) == NUM_JOINTS


def rodrigues(aa: np.ndarray) -> np.ndarray:
  """Rotation matrices ``[..., 3, 3]`` from axis-angle vectors ``[..., 3]``."""
  theta = np.linalg.norm(aa, axis=-1, keepdims=True)
  axis = aa / np.maximum(theta, 1e-12)
  x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
  zero = np.zeros_like(x)
  k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(aa.shape[:-1] + (3, 3))
  s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
  return np.eye(3) + s * k + (1 - c) * (k @ k)


def forward_kinematics(root: np.ndarray, local: np.ndarray, scale: float | np.ndarray = 1.0
                       ) -> np.ndarray:
  """Joints ``[T, 45, 3]`` relative to the pelvis from the root rotation ``[T, 3, 3]`` and the
  23 local joint rotations ``[T, 23, 3, 3]`` (SMPL order), with bones scaled by ``scale``."""
  glob = [root]
  pos = [np.zeros(root.shape[:-2] + (3,))]
  for j in range(1, 24):
    p = _PARENTS[j]
    pos.append(pos[p] + np.einsum('tij,j->ti', glob[p], scale * _OFFSETS[j]))
    glob.append(glob[p] @ local[:, j - 1])
  glob_a, pos_a = np.stack(glob, 1), np.stack(pos, 1)
  extra = pos_a[:, _EXTRA_PARENTS] + np.einsum('tkij,kj->tki', glob_a[:, _EXTRA_PARENTS],
                                                scale * _EXTRA_OFFSETS)
  return np.concatenate([pos_a, extra], 1)


# ---------------------------------------------------------------------------------------------
# Action-conditioned joint angles. A style fills axis-angle vectors [T, 24, 3] (index 0: the
# posture's root rotation in the heading frame) and a vertical lift [T] in metres.
# ---------------------------------------------------------------------------------------------

_F0 = {'walk': 0.9, 'run': 1.4, 'dance': 1.0, 'jump': 0.8, 'clap': 2.5, 'arm_pump': 2.0,
       'embrace': 0.4, 'punch': 1.2, 'gesture': 1.5, 'stand': 0.3, 'sit': 0.3, 'lie': 0.25,
       'bend': 0.5, 'crouch': 0.3, 'steer': 0.3, 'straddle': 1.8, 'stroke': 0.6, 'strum': 3.0}
STYLES = tuple(_F0)
_MOVERS = {'walk': (1.3, (1.5, 2.5)), 'run': (2.8, (2.5, 3.5))}  # speed m/s, circle radius m


def _unit(v: np.ndarray) -> np.ndarray:
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _arm(side: int, direction: np.ndarray) -> np.ndarray:
  """Shoulder axis-angle that turns the rest arm (+x left, -x right) onto ``direction``."""
  rest = np.array([1.0 if side == 0 else -1.0, 0.0, 0.0])
  v = _unit(np.asarray(direction, np.float64))
  axis = np.cross(rest, v)
  s = np.linalg.norm(axis, axis=-1, keepdims=True)
  angle = np.arctan2(s, (v * rest).sum(-1, keepdims=True))
  return np.where(s > 1e-9, axis / np.maximum(s, 1e-12) * angle, 0.0)


def _set_arms(aa: np.ndarray, left_dir, right_dir, left_elbow, right_elbow) -> None:
  """Upper-arm directions (torso frame) and elbow flexion (rad, forearm forward/inward)."""
  t_n = aa.shape[0]
  aa[:, L_SHOULDER] = np.broadcast_to(_arm(0, np.broadcast_to(left_dir, (t_n, 3))), (t_n, 3))
  aa[:, R_SHOULDER] = np.broadcast_to(_arm(1, np.broadcast_to(right_dir, (t_n, 3))), (t_n, 3))
  aa[:, L_ELBOW, 1] = -np.broadcast_to(left_elbow, (t_n,))
  aa[:, R_ELBOW, 1] = np.broadcast_to(right_elbow, (t_n,))


def _legs(aa: np.ndarray, hip_l, hip_r, knee_l, knee_r) -> None:
  """Hip flexion (thigh forward) and knee flexion, rad."""
  aa[:, L_HIP, 0], aa[:, R_HIP, 0] = -hip_l, -hip_r
  aa[:, L_KNEE, 0], aa[:, R_KNEE, 0] = knee_l, knee_r


def _spine(aa: np.ndarray, flex, twist=0.0, lateral=0.0) -> None:
  """Forward flexion, twist and lateral bend of the whole spine, split over its three joints."""
  for j, w in ((SPINE1, 0.5), (SPINE2, 0.3), (SPINE3, 0.2)):
    aa[:, j, 0] += w * flex
    aa[:, j, 1] += w * twist
    aa[:, j, 2] += w * lateral


_DOWN_L, _DOWN_R = np.array([0.15, -1.0, 0.0]), np.array([-0.15, -1.0, 0.0])


def style_pose(style: str, t: np.ndarray, prm: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
  """Clean axis-angle pose ``[T, 24, 3]`` and lift ``[T]`` of ``style`` at times ``t`` (seconds).

  ``prm``: ``freq`` (Hz), ``phase`` (rad), ``amp`` (amplitude factor), ``env_phase`` (rad, the
  turn-taking envelope of gestures)."""
  if style not in _F0:
    raise ValueError(f'style: expected one of {STYLES}, got {style!r}')
  t_n = t.shape[0]
  w = 2 * np.pi * prm['freq'] * t + prm['phase']
  s, c, a = np.sin(w), np.cos(w), prm['amp']
  aa = np.zeros((t_n, 24, 3))
  lift = np.zeros(t_n)
  zero = np.zeros(t_n)
  _set_arms(aa, _DOWN_L, _DOWN_R, 0.15, 0.15)
  sway = 0.03 * a * s  # idle breathing / sway for the static postures
  if style == 'stand':
    _spine(aa, 0.02 + 0.5 * sway, twist=sway)
  elif style == 'sit':
    _legs(aa, 1.5, 1.5, 1.5, 1.5)
    _spine(aa, 0.1 + sway)
    _set_arms(aa, (0.2, -0.8, 0.5), (-0.2, -0.8, 0.5), 0.9, 0.9)
  elif style == 'lie':
    aa[:, PELVIS, 0] = -np.pi / 2
    _spine(aa, sway)
  elif style == 'bend':
    _spine(aa, 1.0 + 0.15 * a * s)
  elif style == 'crouch':
    _legs(aa, 1.9, 1.9, 2.1, 2.1)
    aa[:, L_ANKLE, 0] = aa[:, R_ANKLE, 0] = -0.4
    _spine(aa, 0.35 + sway)
    _set_arms(aa, (0.2, -0.7, 0.7), (-0.2, -0.7, 0.7), 0.4, 0.4)
  elif style in ('walk', 'run'):
    run = style == 'run'
    hip, knee0, knee1 = (0.7, 0.4, 0.9) if run else (0.35, 0.05, 0.6)
    _legs(aa, a * hip * s, -a * hip * s, knee0 + a * knee1 * np.maximum(0, -s),
          knee0 + a * knee1 * np.maximum(0, s))
    swing = a * (0.6 if run else 0.3) * s
    _set_arms(aa, _unit(np.stack([zero + 0.15, -np.cos(swing), -np.sin(swing)], -1)),
              _unit(np.stack([zero - 0.15, -np.cos(swing), np.sin(swing)], -1)),
              1.5 if run else 0.2, 1.5 if run else 0.2)
    _spine(aa, 0.2 if run else 0.05, twist=0.1 * a * s)
    if run:
      lift = 0.05 * a * np.abs(s)
  elif style == 'dance':
    _legs(aa, 0.2 * a * (1 + c), 0.2 * a * (1 - c), 0.3 * a * (1 + c), 0.3 * a * (1 - c))
    _spine(aa, 0.05, twist=0.3 * a * s, lateral=0.25 * a * s)
    up_l, up_r = 0.4 + 0.4 * a * np.sin(2 * w), 0.4 - 0.4 * a * np.sin(2 * w)
    _set_arms(aa, _unit(np.stack([zero + 0.7, up_l, zero + 0.3], -1)),
              _unit(np.stack([zero - 0.7, up_r, zero + 0.3], -1)), 0.6, 0.6)
  elif style == 'jump':
    crouch = 0.8 * a * np.maximum(0, -s)
    _legs(aa, crouch, crouch, 1.6 * crouch, 1.6 * crouch)
    lift = 0.3 * a * np.maximum(0, s)
    up = np.clip(s, -0.6, 1.0)
    _set_arms(aa, _unit(np.stack([zero + 0.4, up, zero + 0.2], -1)),
              _unit(np.stack([zero - 0.4, up, zero + 0.2], -1)), 0.2, 0.2)
  elif style == 'clap':
    x = 0.25 + 0.15 * a * s
    _set_arms(aa, _unit(np.stack([x, zero - 0.2, zero + 0.95], -1)),
              _unit(np.stack([-x, zero - 0.2, zero + 0.95], -1)), 0.6, 0.6)
    _spine(aa, 0.02)
  elif style == 'arm_pump':
    pitch = 0.1 * a * s
    _set_arms(aa, _DOWN_L, _unit(np.stack([zero - 0.1, -0.5 + pitch, zero + 0.85], -1)), 0.15,
              0.9 + 0.35 * a * s)
    _spine(aa, 0.05)
  elif style == 'embrace':
    _set_arms(aa, (0.3, -0.1, 0.95), (-0.3, -0.1, 0.95), 1.3 + 0.1 * a * s, 1.3 + 0.1 * a * s)
    _spine(aa, 0.1, twist=0.1 * a * s)
  elif style == 'punch':
    _legs(aa, 0.3, 0.3, 0.4, 0.4)
    ext_l, ext_r = np.maximum(0, s) ** 2, np.maximum(0, -s) ** 2
    _set_arms(aa, (0.15, 0.1, 1.0), (-0.15, 0.1, 1.0), 1.8 * (1 - a * ext_l).clip(0),
              1.8 * (1 - a * ext_r).clip(0))
    _spine(aa, 0.15, twist=0.25 * a * s)
  elif style == 'gesture':
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 0.25 * t + prm['env_phase'])
    _set_arms(aa, _DOWN_L, (-0.3, -0.7, 0.6), 0.15, 1.2 + 0.3 * a * env * s)
    aa[:, NECK, 0] = 0.08 * a * (1 - env) * np.sin(2 * np.pi * 1.7 * t + prm['phase'])
    _spine(aa, 0.02, twist=0.05 * a * env * c)
  elif style == 'steer':
    _legs(aa, 1.5, 1.5, 1.4, 1.4)
    turn = 0.12 * a * s
    _set_arms(aa, _unit(np.stack([zero + 0.25, -0.1 + turn, zero + 0.95], -1)),
              _unit(np.stack([zero - 0.25, -0.1 - turn, zero + 0.95], -1)), 0.9, 0.9)
  elif style == 'straddle':
    _legs(aa, 1.4, 1.4, 1.2, 1.2)
    aa[:, L_HIP, 2], aa[:, R_HIP, 2] = 0.4, -0.4
    lift = 0.04 * a * np.abs(s)
    _set_arms(aa, (0.2, -0.6, 0.75), (-0.2, -0.6, 0.75), 0.8, 0.8)
  elif style == 'stroke':
    aa[:, PELVIS, 0] = np.pi / 2
    kick = 0.15 * a * np.sin(2 * np.pi * 2.0 * t + prm['phase'])
    _legs(aa, kick, -kick, zero + 0.1, zero + 0.1)
    _set_arms(aa, _unit(np.stack([zero + 0.2, np.cos(w), np.sin(w)], -1)),
              _unit(np.stack([zero - 0.2, -np.cos(w), -np.sin(w)], -1)), 0.3, 0.3)
  elif style == 'strum':
    _set_arms(aa, (0.5, 0.0, 0.85), (-0.1, -0.6, 0.8), 0.5, 1.4 + 0.25 * a * s)
    _spine(aa, 0.05 + sway)
  return aa, lift


# ---------------------------------------------------------------------------------------------
# Scene layout: units on a torus around the view.
# ---------------------------------------------------------------------------------------------

def _seed_rng(*entropy: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([_TAG, len(entropy), *entropy]))


def scene_signatures(dim: int) -> np.ndarray:
  """``[len(SCENES), dim]`` unit vectors: the fixed appearance signature of each scene class
  (car, horse/bike, water, instrument), the same in every video so that it can be learned."""
  return _unit(_seed_rng(0x5C, dim).normal(size=(len(SCENES), dim)))


def _draw_unit(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, Any]:
  """A unit: kind, family, variant, members' styles and labels, footprint."""
  w = np.array([cfg.pose_weight, cfg.interaction_weight, cfg.scene_weight], np.float64)
  group = rng.choice(3, p=w / w.sum())
  if group == 0:
    family = str(rng.choice(list(POSE_SOLOS)))
    unit = {'group': 'pose', 'family': family, 'variant': 'pose', 'styles': [family],
            'labels': [POSE_SOLOS[family]], 'distance': 0.0, 'radius': 0.4}
    if family in _MOVERS:  # movers go round a circle: the footprint is the whole circle
      unit['circle'] = rng.uniform(*_MOVERS[family][1])
      unit['radius'] += unit['circle']
    return unit
  if group == 1:
    family = str(rng.choice(list(INTERACTIONS)))
    style, (d_lo, d_hi), sync, lab_i, lab_a, kind = INTERACTIONS[family]
    # Interaction and look-alike persons equally frequent: a solo look-alike has one person.
    p_inter = 1 / 3 if kind == 'solo' else 0.5
    inter = rng.random() < p_inter
    d = rng.uniform(d_lo, d_hi)
    unit = {'group': 'interaction', 'family': family, 'variant': 'interaction' if inter else
            'lookalike', 'sync': sync, 'kind': kind, 'distance': d, 'radius': d / 2 + 0.4}
    if family == 'watch':
      performer = str(rng.choice(PERFORMERS))
      unit['styles'] = [style, performer]
      unit['labels'] = [lab_i if inter else lab_a, POSE_SOLOS[performer]]
    elif kind == 'solo' and not inter:
      unit['styles'], unit['labels'] = [style], [lab_a]
    else:
      unit['styles'], unit['labels'] = [style, style], [lab_i if inter else lab_a] * 2
    return unit
  family = str(rng.choice(list(SCENES)))
  style, lab_s, lab_a = SCENES[family]
  scene = rng.random() < 0.5
  return {'group': 'scene', 'family': family, 'variant': 'scene' if scene else 'lookalike',
          'styles': [style], 'labels': [lab_s if scene else lab_a], 'distance': 0.0,
          'radius': 0.6}


def _person_params(style: str, rng: np.random.Generator) -> dict[str, float]:
  return {'freq': _F0[style] * rng.uniform(0.85, 1.15), 'phase': rng.uniform(0, 2 * np.pi),
          'amp': rng.uniform(0.85, 1.15), 'env_phase': rng.uniform(0, 2 * np.pi)}


def _place_members(unit: dict[str, Any], centre: np.ndarray, rng: np.random.Generator
                   ) -> list[dict[str, Any]]:
  """Ground position (x, z), heading and motion parameters of each member of a placed unit.

  Heading h faces ground direction (sin h, cos h). Two-person units put their members at
  centre -/+ d/2 along a unit vector; a solo look-alike sits where its interaction's first member
  would, so its position and heading have the same distribution."""
  d = unit['distance']
  h = rng.uniform(-np.pi, np.pi)
  fwd = np.array([np.sin(h), np.cos(h)])
  styles = unit['styles']
  prm = [_person_params(s, rng) for s in styles]
  members = []
  if unit['group'] != 'interaction':
    pos = centre.copy()
    members.append({'pos': pos, 'heading': h})
    if 'circle' in unit:
      members[0]['circle'] = unit['circle']
      members[0]['turn'] = rng.choice([-1.0, 1.0])
      members[0]['speed'] = _MOVERS[styles[0]][0] * rng.uniform(0.85, 1.15)
  elif unit['kind'] == 'solo' or unit['variant'] == 'interaction':
    # First member faces along fwd; the partner (real or virtual) stands d ahead, facing back.
    members.append({'pos': centre - d / 2 * fwd, 'heading': h})
    if len(styles) == 2:
      if unit['family'] == 'watch':
        members.append({'pos': centre + d / 2 * fwd, 'heading': rng.uniform(-np.pi, np.pi)})
      else:
        members.append({'pos': centre + d / 2 * fwd, 'heading': h + np.pi})
  elif unit['family'] == 'talk':
    # Gesturing pair not facing each other: back to back, or side by side facing one way.
    if rng.random() < 0.5:
      members += [{'pos': centre + d / 2 * fwd, 'heading': h},
                  {'pos': centre - d / 2 * fwd, 'heading': h + np.pi}]
    else:
      side = np.array([np.cos(h), -np.sin(h)])
      h2 = h + rng.uniform(-0.5, 0.5)
      order = rng.permutation(2)
      members += [{'pos': centre + (d / 2 if i == 0 else -d / 2) * side,
                   'heading': h if i == 0 else h2} for i in order]
  else:  # watch look-alike: the performer is beside or behind the watcher
    off = h + rng.uniform(0.5 * np.pi, 1.5 * np.pi)
    direction = np.array([np.sin(off), np.cos(off)])
    members += [{'pos': centre - d / 2 * direction, 'heading': h},
                {'pos': centre + d / 2 * direction, 'heading': rng.uniform(-np.pi, np.pi)}]
  # Synchronised motion between partners (each member's marginal is unchanged).
  if unit['group'] == 'interaction' and len(styles) == 2 and unit['family'] != 'watch':
    if unit['variant'] == 'interaction':
      if unit['sync'] == 'same':
        prm[1].update(freq=prm[0]['freq'], phase=prm[0]['phase'])
      elif unit['sync'] == 'opposite':
        prm[1].update(freq=prm[0]['freq'], phase=(prm[0]['phase'] + np.pi) % (2 * np.pi))
      elif unit['sync'] == 'turns':
        prm[1]['env_phase'] = (prm[0]['env_phase'] + np.pi) % (2 * np.pi)
  for m, style, labels, p in zip(members, styles, unit['labels'], prm):
    m.update(style=style, labels=tuple(labels), prm=p)
  return members


class _Camera:
  """A level-ish pinhole camera at the origin of the ground frame G (x right, y down, z
  forward; the ground is y = height), pitched down by ``pitch`` rad."""

  def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
    self.height = rng.uniform(1.4, 2.0)
    self.pitch = rng.uniform(0.03, 0.12)
    self.focal = cfg.focal * rng.uniform(0.9, 1.1)
    self.img_h, self.img_w = cfg.image_size
    sp, cp = math.sin(self.pitch), math.cos(self.pitch)
    self.r_cg = np.array([[1.0, 0, 0], [0, cp, -sp], [0, sp, cp]])
    self.z_lo, self.z_hi = cfg.depth_range
    self.tan_half = self.img_w / 2 / self.focal

  def visible(self, xz: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Ground positions ``[..., 2]`` whose person is in the image (inside the visible band), at
    least ``margin`` metres from the band's edges."""
    x, z = xz[..., 0], xz[..., 1]
    slope = 0.95 * self.tan_half  # |x| <= slope * z - 0.3: the body is inside the image
    side = (slope * z - 0.3 - np.abs(x)) / math.sqrt(1 + slope ** 2)
    return (z >= self.z_lo + margin) & (z <= self.z_hi - margin) & (side >= margin)

  def project(self, p_cam: np.ndarray) -> np.ndarray:
    z = np.maximum(p_cam[..., 2], 1e-3)
    return np.stack([self.img_w / 2 + self.focal * p_cam[..., 0] / z,
                     self.img_h / 2 + self.focal * p_cam[..., 1] / z], -1)


def _layout(cfg: SyntheticConfig, cam: _Camera, times: np.ndarray, rng: np.random.Generator
            ) -> list[dict[str, Any]]:
  """Units drawn and placed (uniform centres on a torus around the view, footprints apart) until
  at least a drawn number of people is visible; returns every member with its ground track."""
  margin = 4.0  # > every partner distance, so no visible person's partner wraps around
  x_half = cam.z_hi * cam.tan_half + margin
  lo = np.array([-x_half, cam.z_lo - margin])
  size = np.array([2 * x_half, cam.z_hi - cam.z_lo + 2 * margin])
  target = int(rng.integers(cfg.people[0], cfg.people[1]))  # +1 person of overshoot at most
  placed: list[tuple[np.ndarray, float]] = []
  people: list[dict[str, Any]] = []
  visible_count = 0
  for _ in range(200):
    if visible_count >= target:
      break
    unit = _draw_unit(cfg, rng)
    centre = None
    for _ in range(50):
      c = lo + rng.random(2) * size
      ok = True
      for c2, r2 in placed:
        dd = np.abs(c - c2)
        dd = np.minimum(dd, size - dd)  # torus distance
        if np.hypot(*dd) < unit['radius'] + r2 + cfg.unit_gap:
          ok = False
          break
      if ok:
        centre = c
        break
    if centre is None:
      continue
    placed.append((centre, unit['radius']))
    members = _place_members(unit, centre, rng)
    unit_id = len(placed) - 1
    tracks = []
    for k, m in enumerate(members):
      if 'circle' in m:  # movers go round a circle about the centre
        r, speed = m['circle'], m['speed']
        ang = m['heading'] + m['turn'] * speed / r * times
        pos = centre + r * np.stack([np.cos(ang), np.sin(ang)], -1)
        vel = m['turn'] * np.stack([-np.sin(ang), np.cos(ang)], -1)
        heading = np.arctan2(vel[:, 0], vel[:, 1])
      else:
        pos = np.broadcast_to(m['pos'], (times.size, 2))
        sway = 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * times + rng.uniform(0, 6.3))
        heading = m['heading'] + sway
      pos = lo + (pos - lo) % size
      vis = cam.visible(pos)
      # Annotated where the whole unit's reach (its partner distance) is in view too, so that
      # an annotated person's partner is always visible; the margin is the same for an
      # interaction and its look-alike.
      annotated = cam.visible(pos, unit['distance'])
      m.update(ground=pos, heading_t=heading, visible=vis, annotated=annotated, unit=unit_id,
               member=k, unit_info=unit)
      tracks.append(m)
    # Count a person once they are visible long enough to be tracked.
    visible_count += sum(int(m['visible'].sum() >= cfg.min_track_frames) for m in tracks)
    people.extend(tracks)
  return people


# ---------------------------------------------------------------------------------------------
# One person's track
# ---------------------------------------------------------------------------------------------

def _ground_rotation(heading: np.ndarray) -> np.ndarray:
  """``[T, 3, 3]`` body (x left, y up, z forward) -> ground frame G for a heading."""
  s, c = np.sin(heading), np.cos(heading)
  zero, one = np.zeros_like(s), np.ones_like(s)
  cols = [np.stack([-c, zero, s], -1), np.stack([zero, -one, zero], -1), np.stack([s, zero, c], -1)]
  return np.stack(cols, -1)


def _render_person(cfg: SyntheticConfig, cam: _Camera, m: dict[str, Any], times: np.ndarray,
                   identity: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, Any]:
  """Per-frame SMPL pose, joints, location, box and appearance of one person (all frames)."""
  t_n = times.size
  aa, lift = style_pose(m['style'], times, m['prm'])
  aa = aa + identity['posture'][None]  # the person's own static posture jitter
  betas, scale = identity['betas'], identity['scale']
  # Clean pose in the heading frame: pelvis height puts the lowest joint on the floor.
  clean_local = rodrigues(aa[:, 1:])
  clean_root = rodrigues(aa[:, 0])
  joints_h = forward_kinematics(clean_root, clean_local, scale)
  pelvis_h = -joints_h[..., 1].min(1) + 0.02 + lift
  r_gb = _ground_rotation(m['heading_t'])
  pelvis_g = np.stack([m['ground'][:, 0], cam.height - pelvis_h, m['ground'][:, 1]], -1)
  location = pelvis_g @ cam.r_cg.T
  # Observed (noisy) pose, as a 3D pose estimator would report it.
  noisy = aa + cfg.pose_noise * rng.normal(size=aa.shape)
  local = rodrigues(noisy[:, 1:])
  orient = cam.r_cg @ r_gb @ rodrigues(noisy[:, 0])
  joints = forward_kinematics(orient, local, scale)
  loc_obs = location * (1 + cfg.location_noise * rng.normal(size=(t_n, 1)))
  betas_obs = betas + 0.02 * rng.normal(size=(t_n, 10))
  pose = np.concatenate([local.reshape(t_n, 207), orient.reshape(t_n, 9), betas_obs, loc_obs], 1)
  # Boxes from the projected joints (head top added), clipped; detector noise.
  uv = cam.project(joints + location[:, None])
  top = cam.project(location + np.einsum('tij,j->ti', orient, np.array([0, 0.75, 0]) * scale))
  x0, x1 = uv[..., 0].min(1), uv[..., 0].max(1)
  y0, y1 = np.minimum(uv[..., 1].min(1), top[:, 1]), uv[..., 1].max(1)
  w, h = x1 - x0, y1 - y0
  x0, y0, w, h = x0 - 0.1 * w, y0 - 0.05 * h, 1.2 * w, 1.1 * h
  gt_box = np.stack([x0, y0, w, h], -1)
  noise = cfg.box_noise * rng.normal(size=(t_n, 4)) * np.stack([w, h, w, h], -1)
  box = gt_box + noise
  box[:, 2:] = np.maximum(box[:, 2:], 2.0)
  # Appearance: identity + scene signature (scene classes) + per-frame noise.
  d_a = cfg.appearance_dim
  appe = np.broadcast_to(identity['appearance'], (t_n, d_a)).copy()
  unit = m['unit_info']
  if unit['group'] == 'scene' and unit['variant'] == 'scene':
    appe += cfg.scene_strength * scene_signatures(d_a)[_SCENE_ORDER.index(unit['family'])]
  appe += cfg.appearance_noise / math.sqrt(d_a) * rng.normal(size=(t_n, d_a))
  conf = np.clip(rng.normal(0.9, 0.05, t_n), 0.5, 0.999)
  return {'pose': pose, 'joints': joints, 'location': loc_obs, 'box': box, 'gt_box': gt_box,
          'appearance': appe, 'conf': conf}


def _hold_last(values: np.ndarray, detected: np.ndarray) -> np.ndarray:
  """Copies the last detected row into each missed frame (the next one before the first)."""
  idx = np.where(detected, np.arange(detected.size), -1)
  idx = np.maximum.accumulate(idx)
  first = int(np.argmax(detected))
  idx[idx < 0] = first
  return values[idx]


def _clip_box(box: np.ndarray, img_h: int, img_w: int) -> np.ndarray:
  x0 = np.clip(box[..., 0], 0, img_w - 2)
  y0 = np.clip(box[..., 1], 0, img_h - 2)
  x1 = np.clip(box[..., 0] + box[..., 2], x0 + 1, img_w)
  y1 = np.clip(box[..., 1] + box[..., 3], y0 + 1, img_h)
  return np.stack([x0, y0, x1 - x0, y1 - y0], -1)


def _multi_hot(ids: Sequence[int]) -> np.ndarray:
  v = np.zeros(NUM_AVA_LABELS, np.float32)
  v[np.asarray(ids, np.int64) - 1] = 1.0
  return v


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------

def make_video(config: SyntheticConfig, rng: np.random.Generator, video_id: str = 'video'
               ) -> list[dict[str, Any]]:
  """One video's tracks (see the module docstring for the layout), from ``rng``."""
  cfg = config
  t_total = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
  times = np.arange(t_total) / cfg.fps
  cam = _Camera(cfg, rng)
  people = _layout(cfg, cam, times, rng)
  img_h, img_w = cfg.image_size
  evaluated = np.asarray(ava.EVALUATED_IDS, np.int64)
  keyframes = np.zeros(t_total, bool)
  step = int(round(cfg.fps))
  keyframes[step::step] = True
  tracks = []
  by_slot = {}
  for m in people:
    span = np.nonzero(m['visible'])[0]
    if span.size < cfg.min_track_frames:
      continue
    identity = {'betas': rng.normal(0.0, 0.7, 10),
                'posture': np.concatenate([[np.zeros(3)], rng.normal(0, 0.04, (23, 3))]),
                'appearance': _unit(rng.normal(size=cfg.appearance_dim))}
    identity['scale'] = float(np.clip(1 + 0.04 * identity['betas'][0], 0.9, 1.1))
    r = _render_person(cfg, cam, m, times, identity, rng)
    f0, f1 = int(span[0]), int(span[-1]) + 1
    fid = np.arange(f0, f1)
    vis = m['visible'][f0:f1]
    missed = phalp_synthetic._miss_runs(  # pylint: disable=protected-access
        types.SimpleNamespace(num_frames=fid.size, people=1, miss_rate=cfg.miss_rate,
                              miss_burst=cfg.miss_burst), rng)[:, 0]
    detected = vis & ~missed
    if detected.sum() < max(1, cfg.min_track_frames // 2):
      continue
    t_n = fid.size
    labels = _multi_hot(m['labels'])
    annotated = m['annotated'][f0:f1]
    has_gt = np.where(keyframes[f0:f1] & annotated, GT, NONE)
    pseudo = (detected & annotated & (has_gt == NONE)
              & (rng.random(t_n) < cfg.pseudo_label_rate))
    has_gt[pseudo] = PSEUDO
    label_t = np.zeros((t_n, NUM_AVA_LABELS), np.float32)
    label_t[has_gt == GT] = labels
    for i in np.nonzero(pseudo)[0]:  # noisy copies: drop positives, add a false positive
      noisy = labels * (rng.random(NUM_AVA_LABELS) >= cfg.pseudo_label_noise)
      if rng.random() < cfg.pseudo_label_noise:
        noisy[rng.choice(evaluated) - 1] = 1.0
      label_t[i] = noisy
    sl = slice(f0, f1)
    pose, joints = _hold_last(r['pose'][sl], detected), _hold_last(r['joints'][sl], detected)
    loc = _hold_last(r['location'][sl], detected)
    box = _clip_box(_hold_last(r['box'][sl], detected), img_h, img_w)
    appe = _hold_last(r['appearance'][sl], detected)
    track_id = str(len(tracks))
    by_slot[(m['unit'], m['member'])] = track_id
    gt_box = _clip_box(r['gt_box'][sl], img_h, img_w)
    tracks.append({
        FID: fid.astype(np.int64),
        POSE: pose.reshape(t_n, 1, POSE_DIM).astype(np.float32),
        JOINTS: joints.reshape(t_n, 1, NUM_JOINTS, 3).astype(np.float32),
        CAMERA: loc.reshape(t_n, 1, 3).astype(np.float32),
        HAS_DETECTION: detected.reshape(t_n, 1),
        LABELS: label_t.reshape(t_n, 1, NUM_AVA_LABELS),
        HAS_GT: has_gt.reshape(t_n, 1).astype(np.int64),
        FRAME_NAME: [f'{video_id}/{f:06d}.jpg' for f in fid],
        FRAME_BBOX: box.reshape(t_n, 1, 4).astype(np.float32),
        FRAME_SIZE: np.broadcast_to(np.array([img_h, img_w], np.float32), (t_n, 1, 2)).copy(),
        FRAME_CONF: np.where(detected, r['conf'][sl], 0.0).reshape(t_n, 1).astype(np.float32),
        APPEARANCE_KEY: appe.reshape(t_n, 1, cfg.appearance_dim).astype(np.float32),
        VIDEO_ID: video_id, TRACK_ID: track_id,
        INFO_KEY: {'group': m['unit_info']['group'], 'family': m['unit_info']['family'],
                   'variant': m['unit_info']['variant'], 'style': m['style'],
                   'labels': tuple(int(i) for i in m['labels']), 'unit': int(m['unit']),
                   'member': int(m['member']), 'annotated': bool(annotated.any()),
                   'gt_box': gt_box.astype(np.float32)},
    })
  for tr in tracks:  # partner's track id (None: no partner, or the partner is not visible)
    info = tr[INFO_KEY]
    info['partner'] = by_slot.get((info['unit'], 1 - info['member'])) if info['group'] == \
        'interaction' else None
  return tracks


def video_seed(seed: int, index: int) -> np.random.Generator:
  """The generator of video ``index`` of a dataset made with ``seed``."""
  return _seed_rng(int(seed), int(index))


def make_videos(config: SyntheticConfig, num_videos: int, seed: int, progress: bool = False,
                prefix: str = 'video') -> list[list[dict[str, Any]]]:
  """``num_videos`` videos, video i from its own generator :func:`video_seed` ``(seed, i)``."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return [make_video(config, video_seed(seed, i), f'{prefix}{i:05d}')
          for i in tqdm(range(num_videos), desc='synthetic LART videos', disable=not progress)]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def gt_rows(video: list[dict[str, Any]], fps: float) -> list[tuple]:
  """AVA ground-truth rows ``(video_id, seconds, x1, y1, x2, y2, action_id, person_id)`` of a
  video's keyframes (boxes normalised, from the true, not the detected, box)."""
  rows = []
  for tr in video:
    h_img, w_img = (float(v) for v in tr[FRAME_SIZE][0, 0])
    gt_box = tr[INFO_KEY]['gt_box']
    for i in np.nonzero(tr[HAS_GT][:, 0] == GT)[0]:
      x, y, w, h = (float(v) for v in gt_box[i])
      box = (max(x / w_img, 0.0), max(y / h_img, 0.0), min((x + w) / w_img, 1.0),
             min((y + h) / h_img, 1.0))
      seconds = int(round(int(tr[FID][i]) / fps))
      for action in np.nonzero(tr[LABELS][i, 0] > 0.5)[0] + 1:
        rows.append((tr[VIDEO_ID], seconds, *box, int(action), int(tr[TRACK_ID])))
  return rows


def save_track(track: dict[str, Any], path: str) -> None:
  """Pickles one track dict to ``path`` atomically."""
  data = pickle.dumps(track, protocol=pickle.HIGHEST_PROTOCOL)
  phalp_io.atomic_write(path, lambda f: f.write(data))


def write_dataset(output_dir: str, config: SyntheticConfig, num_videos: int, seed: int,
                  split: str, progress: bool = True) -> dict[str, Any]:
  """Writes ``{split}/{video_id}/{track_id}.pkl`` per track, ``{split}_gt.csv``,
  ``labelmap.pbtxt``, an empty ``{split}_excluded_timestamps.csv`` and ``{split}_info.json``;
  returns the summary written to the json (counts per class and per family)."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  if not split or os.sep in split:
    raise ValueError(f'write_dataset: bad split name {split!r}')
  rows, tracks_n, per_class, per_family = [], 0, {}, {}
  for i in tqdm(range(num_videos), desc=f'synthetic LART {split}', disable=not progress):
    video_id = f'{split}{i:05d}'
    video = make_video(config, video_seed(seed, i), video_id)
    for tr in video:
      save_track(tr, os.path.join(output_dir, split, video_id, f'{tr[TRACK_ID]}.pkl'))
      info = tr[INFO_KEY]
      key = f"{info['family']}/{info['variant']}"
      per_family[key] = per_family.get(key, 0) + 1
    rows.extend(gt_rows(video, config.fps))
    tracks_n += len(video)
  for r in rows:
    per_class[r[6]] = per_class.get(r[6], 0) + 1
  ava.write_csv(os.path.join(output_dir, GT_CSV.format(split=split)), rows)
  ava.write_labelmap(os.path.join(output_dir, LABELMAP))
  phalp_io.atomic_write(os.path.join(output_dir, EXCLUSIONS.format(split=split)), lambda f: None)
  summary = {'split': split, 'seed': seed, 'num_videos': num_videos, 'num_tracks': tracks_n,
             'num_gt_rows': len(rows), 'config': dataclasses.asdict(config),
             'interaction_ids': INTERACTION_IDS, 'scene_ids': SCENE_IDS,
             'lookalike_ids': LOOKALIKE_IDS, 'pose_ids': POSE_IDS,
             'keyframe_boxes_per_class': {str(k): v for k, v in sorted(per_class.items())},
             'tracks_per_family': dict(sorted(per_family.items()))}
  text = json.dumps(summary, indent=2).encode()
  phalp_io.atomic_write(os.path.join(output_dir, INFO_JSON.format(split=split)),
                        lambda f: f.write(text))
  return summary


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', required=True, help='output directory')
  parser.add_argument('--train', type=int, default=200, help='training videos')
  parser.add_argument('--val', type=int, default=50, help='validation videos')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  cfg = SyntheticConfig()
  for split, n, offset in (('train', args.train, 0), ('val', args.val, 1)):
    if n > 0:
      s = write_dataset(args.output, cfg, n, 2 * args.seed + offset, split)
      print(f"{split}: {s['num_videos']} videos, {s['num_tracks']} tracks, "
            f"{s['num_gt_rows']} keyframe labels -> {args.output}")


if __name__ == '__main__':
  main()
