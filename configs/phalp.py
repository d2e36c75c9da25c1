r"""PHALP's pose predictor (seed 000, ch. 2): a small transformer over a tracklet's pose history
that predicts the pose up to c = 12 frames after the last observation (HMMR-like; 1 layer,
1 head in the paper's SupMat).

Train on synthetic scenes generated in memory (1500 steps, ~1.5 minutes on 2 busy CPU cores; on
held-out scenes eval/mse ~0.086 against eval/last_obs_mse ~0.103 for the last observation, i.e.
17% lower; ~27% lower with complete 16-frame histories)::

  python -m launch.train --config configs/phalp.py:pose_predictor --workdir runs/pose_predictor

Train on your own pose sequences: a folder of canonical ``.npz`` detection files with ``gt_id``
(``phalp_jax/io.py``), optionally a held-out folder for eval::

  python -m launch.train --config configs/phalp.py:pose_predictor --workdir runs/pose \
      --config.data.input=DIR --config.data.eval_input=HELD_OUT_DIR --config.model.pose_dim=229

Use it in the tracker: ``phalp_jax.pose.load_pose_predictor('runs/pose_predictor')`` (an empty
workdir gives the last-observation predictor), or from the command line
``python -m launch.track --config configs/phalp.py --config.tracker.pose_predictor=runs/pose_predictor
--input DETECTIONS --output DIR``; the ``tracker`` block holds the tracker's settings.

Variants:

* ``pose_predictor``: width 64, 1 layer, 1 head, horizon 1..12; histories of up to 16 slots
  with 20% of the entries missing and 25% of the examples cut to 1..16 entries (young tracklets).
  The history is longer than the released tracker's 7 because the synthetic poses (sums of
  0.1-1 Hz sinusoids plus noise 0.1) are barely predictable from 7 frames: there the model is
  only ~4% better than the last observation (the best linear filter ~10%). The model takes any
  history length, so a tracker passing 7 poses still works.
* ``tiny``: width 32, two scenes, 100 steps of batch 64, for tests.
"""

from __future__ import annotations

import ml_collections

from configs import common

VARIANTS = ('pose_predictor', 'tiny')


def get_config(arg: str = 'pose_predictor') -> ml_collections.ConfigDict:
  variant = arg or 'pose_predictor'
  if variant not in VARIANTS:
    raise ValueError(f'configs/phalp.py: unknown variant {variant!r}; choose from {VARIANTS}')

  config = common.base_config()
  config.task = 'phalp_pose'
  config.variant = variant

  m = config.model
  m.pose_dim = 24                # Dp: the synthetic scenes' pose size (229 for HMAR features)
  m.dim = 64
  m.num_layers = 1               # paper: 1 layer, 1 head
  m.num_heads = 1
  m.mlp_dim = 128
  m.time_features = 32           # sine-cosine features of t_i - target_t
  m.time_max_period = 100.0      # frames
  m.max_horizon = 12             # c (paper): frames ahead of the last observation
  m.norm = 'none'                # a norm would discard the scale of pose changes
  m.norm_eps = 1e-6
  m.dtype = 'float32'

  d = config.data
  d.input = ''                   # DIR of canonical .npz detection files with gt_id; '' = synthetic
  d.eval_input = ''              # held-out DIR ('' = held-out synthetic scenes, or none for DIR)
  d.history = 16                 # H: history slots (see the module docstring)
  d.drop_rate = 0.2              # chance each history entry but the newest is missing
  d.truncate_rate = 0.25         # chance an example has only 1..history entries (young tracklet)
  d.synthetic = ml_collections.ConfigDict({
      'preset': 'medium',        # phalp_jax.synthetic.PRESETS
      'train_scenes': 64,
      'eval_scenes': 16,
      'seed': 0,                 # scenes make_scene(preset, seed=(seed, i))
      'eval_seed': 1,            # held-out scenes: a different seed
  })

  t = config.train
  t.global_batch_size = 256
  t.total_steps = 1500
  t.lr = 5e-3
  t.warmup_steps = 50
  t.weight_decay = 0.01
  t.b1, t.b2 = 0.9, 0.99
  t.clip_norm = 1.0
  config.checkpoint.every_steps = 500
  config.log.every_steps = 100
  config.eval.every_steps = 500
  config.eval.batches = 8

  if variant == 'tiny':           # seconds on one CPU core: tests
    m.dim = 32
    m.mlp_dim = 64
    m.time_features = 8
    d.synthetic.train_scenes = 2
    d.synthetic.eval_scenes = 1
    t.global_batch_size = 64
    t.total_steps = 100
    t.warmup_steps = 5
    t.lr = 1e-2
    config.checkpoint.every_steps = 50
    config.log.every_steps = 10
    config.eval.every_steps = 50
    config.eval.batches = 2
  # The tracker (python -m launch.track --config configs/phalp.py): every PhalpParams field with
  # the released defaults (phalp_jax/state.py), the slot count, and a pose-predictor workdir.
  import dataclasses
  from phalp_jax.state import PhalpParams
  config.tracker = ml_collections.ConfigDict(dataclasses.asdict(PhalpParams()))
  config.tracker.capacity = 32
  config.tracker.pose_predictor = ''   # a training workdir of this config; '' = last observation
  return config
