"""The PHALP pose predictor as a trainer task (``config.task = 'phalp_pose'``) and its data.

Pose sequences come from identities (``gt_id >= 0``) in detection files: synthetic scenes generated
in memory (``data.input = ''``; :func:`phalp_jax.synthetic.make_scene`) or a folder of canonical
``.npz`` detection files with ``gt_id`` (``data.input = DIR``). An example is one prediction:

* a target detection at frame ``T`` of one identity and a horizon ``h`` in ``1..max_horizon``;
* the history: that identity's last ``data.history`` detections at frames ``<= T - h`` (so the
  detector's own misses and occlusions appear as gaps in time), each but the newest dropped with
  probability ``data.drop_rate`` (``valid = False``, its slot filled with noise);
* the target: the observed pose at ``T``.

Arrays: ``pose_hist [H, Dp]``, ``times [H]`` (absolute frames), ``valid [H]``, ``target_t []``,
``target [Dp]``. The loss is the squared error per pose feature, averaged over features and summed
over examples; ``last_obs_mse`` is the last-observation baseline on the same examples.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from typing import Any, Iterable, Mapping

import grain
import jax
import jax.numpy as jnp
import numpy as np

from phalp_jax import pose as pose_lib
from toto_jax import data as token_data

_EVAL_STREAM = 0x706F7365  # 'pose': the eval examples' random stream, fixed across runs


# ------------------------------------------------------------------------------------------------
# Pose sequences
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PoseTracks:
  """Per-identity pose sequences: ``frames[i]`` int64 ``[n_i]`` (increasing) and ``poses[i]``
  float32 ``[n_i, Dp]``."""
  frames: list[np.ndarray]
  poses: list[np.ndarray]

  def __len__(self) -> int:
    return len(self.frames)

  def targets(self, max_horizon: int) -> np.ndarray:
    """``[N, 2]`` (track, position) of every detection usable as a target: one with a previous
    detection of the same identity at most ``max_horizon`` frames before it."""
    rows = []
    for i, f in enumerate(self.frames):
      pos = np.nonzero(np.diff(f) <= max_horizon)[0] + 1
      rows.append(np.stack([np.full_like(pos, i), pos], -1))
    return np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)


def tracks_from_detections(frame: np.ndarray, pose: np.ndarray, gt_id: np.ndarray
                           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Groups detections by ``gt_id >= 0``; a second detection of an identity in a frame is
  dropped. Identities with fewer than 2 detections are skipped."""
  frames, poses = [], []
  for ident in np.unique(gt_id[gt_id >= 0]):
    rows = np.nonzero(gt_id == ident)[0]
    rows = rows[np.argsort(frame[rows], kind='stable')]
    f = frame[rows]
    keep = np.concatenate([[True], np.diff(f) > 0])
    if keep.sum() >= 2:
      frames.append(f[keep].astype(np.int64))
      poses.append(pose[rows[keep]].astype(np.float32))
  return frames, poses


def synthetic_tracks(preset: str, num_scenes: int, seed: int, pose_dim: int) -> PoseTracks:
  """Identities of ``num_scenes`` synthetic scenes ``make_scene(preset, seed=(seed, i))``."""
  from phalp_jax import synthetic
  cfg = synthetic.get_config(preset, pose_dim=pose_dim)
  frames, poses = [], []
  for i in range(num_scenes):
    scene = synthetic.make_scene(cfg, seed=(seed, i))
    f, p = tracks_from_detections(scene['frame'], scene['pose'], scene['gt_id'])
    frames += f
    poses += p
  return PoseTracks(frames, poses)


def npz_tracks(folder: str, pose_dim: int, field: str = 'data.input') -> PoseTracks:
  """Identities of every canonical ``.npz`` detection file in ``folder`` (needs ``gt_id``)."""
  from phalp_jax import io as phalp_io
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'{field}: directory {folder!r} does not exist')
  paths = sorted(glob.glob(os.path.join(folder, '*.npz')))
  if not paths:
    raise ValueError(f'{field}: {folder!r} holds no .npz detection files')
  frames, poses = [], []
  for path in paths:
    dets = phalp_io.load_npz(path)
    if dets.gt_id is None:
      raise ValueError(f'{field}: {path} has no gt_id field; pose sequences need identities')
    if dets.pose.shape[1] != pose_dim:
      raise ValueError(f'{field}: {path} has pose vectors of size {dets.pose.shape[1]} but '
                       f'model.pose_dim is {pose_dim} (--config.model.pose_dim=...)')
    f, p = tracks_from_detections(dets.frame, dets.pose, dets.gt_id)
    frames += f
    poses += p
  if not frames:
    raise ValueError(f'{field}: no identity in {folder!r} has two or more detections')
  return PoseTracks(frames, poses)


def make_example(tracks: PoseTracks, track: int, position: int, rng: np.random.Generator, *,
                 history: int, max_horizon: int, drop_rate: float, truncate_rate: float = 0.0
                 ) -> dict[str, np.ndarray]:
  """One training example for the target ``tracks[track]`` at ``position`` (module docstring).

  With probability ``truncate_rate`` only a random number ``1..history`` of the newest slots are
  filled, as for a young tracklet."""
  frames, poses = tracks.frames[track], tracks.poses[track]
  t_target = frames[position]
  h = int(rng.integers(1, max_horizon + 1))
  last = int(np.searchsorted(frames, t_target - h, side='right')) - 1
  if last < 0 or t_target - frames[last] > max_horizon:
    last = position - 1  # a gap longer than max_horizon: the nearest earlier detection
  length = int(rng.integers(1, history + 1)) if rng.random() < truncate_rate else history
  first = max(0, last - length + 1)
  n = last - first + 1
  dp = poses.shape[1]
  pose_hist = rng.normal(size=(history, dp)).astype(np.float32)  # what invalid slots hold
  times = np.zeros(history, np.float32)
  valid = np.zeros(history, bool)
  pose_hist[history - n:] = poses[first:last + 1]
  times[history - n:] = frames[first:last + 1]
  valid[history - n:] = True
  valid[history - n:history - 1] &= rng.random(n - 1) >= drop_rate  # the newest always stays
  return {'pose_hist': pose_hist, 'times': times, 'valid': valid,
          'target_t': np.float32(t_target), 'target': poses[position].astype(np.float32)}


class _SampleTrain(grain.transforms.RandomMap):
  """A batch of target indices -> a batch of examples (one random stream per batch: Grain's
  per-element overhead would cost several times the sampling itself)."""

  def __init__(self, tracks: PoseTracks, targets: np.ndarray, **kw):
    self.tracks, self.targets, self.kw = tracks, targets, kw

  def random_map(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    examples = [make_example(self.tracks, int(track), int(position), rng, **self.kw)
                for track, position in self.targets[np.asarray(indices)]]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class _SampleEval(grain.transforms.Map):
  """Deterministic: example ``i`` depends only on ``(seed, i)``."""

  def __init__(self, tracks: PoseTracks, targets: np.ndarray, seed: int, **kw):
    self.tracks, self.targets, self.seed, self.kw = tracks, targets, seed, kw

  def map(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(token_data.derive_seed(self.seed, int(index)))
    track, position = self.targets[int(rng.integers(len(self.targets)))]
    return make_example(self.tracks, int(track), int(position), rng, **self.kw)


# ------------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------------

class PosePredictorTask:
  """Plugs :mod:`phalp_jax.pose` into ``launch.train`` (``config.task = 'phalp_pose'``)."""

  def __init__(self, config):
    self.config = config
    self.model_cfg = pose_lib.model_config(config)
    self.model = pose_lib.PosePredictor(self.model_cfg)

  # --- configuration -------------------------------------------------------------------------
  def validate(self) -> None:
    from launch.sharding import ConfigError
    d = self.config.data
    try:
      pose_lib.validate_model_config(self.model_cfg)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if int(d.history) < 1:
      raise ConfigError(f'data.history must be >= 1, got {d.history}')
    if not 0.0 <= float(d.drop_rate) < 1.0:
      raise ConfigError(f'data.drop_rate must be in [0, 1), got {d.drop_rate}')
    if not 0.0 <= float(d.truncate_rate) <= 1.0:
      raise ConfigError(f'data.truncate_rate must be in [0, 1], got {d.truncate_rate}')
    for field, spec in (('data.input', d.input), ('data.eval_input', d.eval_input)):
      if spec and not os.path.isdir(spec):
        raise ConfigError(f'{field}: directory {spec!r} does not exist')
    if not d.input:
      s = d.synthetic
      from phalp_jax import synthetic
      if s.preset not in synthetic.PRESETS:
        raise ConfigError(f'data.synthetic.preset must be one of {sorted(synthetic.PRESETS)}, '
                          f'got {s.preset!r}')
      for name in ('train_scenes', 'eval_scenes'):
        if int(s[name]) < (1 if name == 'train_scenes' else 0):
          raise ConfigError(f'data.synthetic.{name} must be >= '
                            f'{1 if name == "train_scenes" else 0}, got {s[name]}')
      if s.eval_seed == s.seed:
        raise ConfigError(f'data.synthetic.eval_seed ({s.eval_seed}) must differ from '
                          f'data.synthetic.seed: evaluation is on held-out scenes')

  # --- model -----------------------------------------------------------------------------------
  def init(self, rng: jax.Array) -> Any:
    return pose_lib.init_params(self.config, rng, history=int(self.config.data.history))

  def predict(self, params, batch: Mapping[str, jax.Array]) -> jax.Array:
    return self.model.apply({'params': params}, batch['pose_hist'], batch['times'],
                            batch['valid'], batch['target_t'])

  def loss(self, params, batch: Mapping[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    del rng
    target = batch['target'].astype(jnp.float32)
    pred = self.predict(params, batch)
    mse = jnp.mean((pred - target) ** 2, axis=-1)
    base = pose_lib.last_observation(batch['pose_hist'], batch['times'], batch['valid'],
                                     batch['target_t'])
    base_mse = jnp.mean((base - target) ** 2, axis=-1)
    aux = {'weight': jnp.float32(target.shape[0]), 'mse': mse.sum(),
           'last_obs_mse': base_mse.sum()}
    return mse.sum(), aux

  def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
    return {'pose_hist': ('act_batch', None, None), 'times': ('act_batch', None),
            'valid': ('act_batch', None), 'target_t': ('act_batch',),
            'target': ('act_batch', None)}

  # --- data ------------------------------------------------------------------------------------
  def _example_kw(self) -> dict[str, Any]:
    d = self.config.data
    return {'history': int(d.history), 'max_horizon': int(self.model_cfg.max_horizon),
            'drop_rate': float(d.drop_rate), 'truncate_rate': float(d.truncate_rate)}

  @functools.cache
  def _tracks(self, split: str) -> PoseTracks | None:
    d, dp = self.config.data, int(self.model_cfg.pose_dim)
    if split == 'train':
      if d.input:
        return npz_tracks(d.input, dp, 'data.input')
      s = d.synthetic
      return synthetic_tracks(s.preset, int(s.train_scenes), int(s.seed), dp)
    if d.eval_input:
      return npz_tracks(d.eval_input, dp, 'data.eval_input')
    if d.input or not int(d.synthetic.eval_scenes):
      return None
    s = d.synthetic
    return synthetic_tracks(s.preset, int(s.eval_scenes), int(s.eval_seed), dp)

  def _targets(self, tracks: PoseTracks, field: str) -> np.ndarray:
    targets = tracks.targets(int(self.model_cfg.max_horizon))
    if not len(targets):
      raise ValueError(f'{field}: no detection has an earlier one of the same identity within '
                       f'model.max_horizon={self.model_cfg.max_horizon} frames')
    return targets

  def train_data(self, *, seed: int, process_index: int, process_count: int, batch_size: int):
    tracks = self._tracks('train')
    targets = self._targets(tracks, 'data.input')
    ds = grain.MapDataset.range(len(targets))
    ds = token_data.shard_for_process(ds, 'data.input', process_index, process_count, 1)
    ds = ds.shuffle(seed=token_data.derive_seed(seed, 0, 1)).repeat(None)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.random_map(_SampleTrain(tracks, targets, **self._example_kw()),
                       seed=token_data.derive_seed(seed, 0, 2))
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8))

  def eval_data(self, *, process_index: int, process_count: int, batch_size: int,
                num_batches: int) -> Iterable[Mapping[str, Any]]:
    tracks = self._tracks('eval')
    if tracks is None:
      return []
    targets = self._targets(tracks, 'data.eval_input' if self.config.data.eval_input
                            else 'data.synthetic')
    n = batch_size * num_batches * process_count
    ds = grain.MapDataset.range(n)
    ds = token_data.shard_for_process(ds, 'eval', process_index, process_count, 1)
    ds = ds.map(_SampleEval(tracks, targets, _EVAL_STREAM,
                            **self._example_kw()))
    ds = ds.batch(batch_size, drop_remainder=True)
    return [ds[i] for i in range(len(ds))][:num_batches]

  # --- accounting ------------------------------------------------------------------------------
  def tokens_per_example(self) -> int:
    """History slots per example (one prediction each)."""
    return int(self.config.data.history)

  @functools.cache
  def train_flops_per_example(self) -> float:
    """6 x matmul parameters x tokens (history + query) plus attention scores and values."""
    params = jax.eval_shape(self.init, jax.random.key(0))
    n = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params))  # boxes are nodes
    tokens = int(self.config.data.history) + 1
    attn = 2 * 2 * tokens * tokens * self.model_cfg.dim * self.model_cfg.num_layers
    return float(3 * (2 * n * tokens + attn))

