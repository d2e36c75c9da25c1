r"""LART: action recognition from tracklets of 3D people (seed 000 chapter 3, seed 001).

Train on the built-in synthetic tracklets (generated in memory; ``tiny`` takes about a minute on
2 CPU cores), then evaluate with the AVA protocol (writes ``DIR/detections.csv`` and prints the
per-class AP table, mAP and the PM / OM / PI means)::

  python -m launch.train --config configs/lart.py:tiny --workdir runs/lart_tiny
  python -m launch.evaluate --config configs/lart.py:tiny --workdir runs/lart_tiny

Pre-train then fine-tune (the fine-tune run starts from the pre-trained parameters)::

  python -m launch.train --config configs/lart.py:pose_appearance,pretrain --workdir runs/pre
  python -m launch.train --config configs/lart.py:pose_appearance,finetune --workdir runs/ft \
      --config.train.init_from=runs/pre

Real tracklets (the released pickles, one per track; AVA files for evaluation)::

  python -m launch.train --config configs/lart.py:pose_appearance --workdir runs/lart \
      --config.data.input=TRACKS/train --config.data.eval_input=TRACKS/val \
      --config.data.appearance_dim=1152
  python -m launch.evaluate --config configs/lart.py:pose_appearance --workdir runs/lart \
      --config.data.eval_input=TRACKS/val --config.data.appearance_dim=1152 \
      --config.evaluate.groundtruth=ava_val_v2.2.csv --config.evaluate.labelmap=LABELMAP.pbtxt \
      --config.evaluate.exclusions=ava_val_excluded_timestamps_v2.2.csv

The synthetic benchmark (pose n=1 vs pose n=5 vs pose + appearance, identical budgets):
``python -m lart_jax.benchmark``.

Variants (``configs/lart.py:VARIANT[,OPTION...]``):

* ``pose``: LART-pose: pose tokens only, 16 layers, 16 heads, width 512, 128 frames, 5 people.
* ``pose_appearance``: LART: pose MLP -> 256 and appearance MLP -> 256, concatenated to 512;
  ``data.appearance_dim`` (64 for the synthetic data, 1152 for MViT features) sizes the second.
* ``tiny``: width 32, 2 layers, 32-frame windows, 200 steps of batch 16: CPU tests and demos.

Options: ``nK`` (K people per example, e.g. ``n1``), ``appearance`` (add appearance tokens to
``tiny`` or ``pose``), ``pretrain`` (pseudo-label tokens only, mask ratio 0.4), ``finetune``
(ground-truth tokens only, mask ratio 0, layer-wise lr decay 0.9, drop path 0.1; set
``train.init_from`` to the pre-trained workdir). Without either: both label levels, mask 0.4.

Recipe (Table 3.6): AdamW betas (0.9, 0.95), weight decay 0.05, lr 1e-3, batch 64, 30 epochs with
5 warm-up epochs (cosine), dropout 0.1. ``train.epochs`` > 0 sets ``train.total_steps`` and
``train.warmup_epochs`` sets ``train.warmup_steps`` from the number of training examples.
"""

from __future__ import annotations

import re

import ml_collections

from configs import common

VARIANTS = ('pose', 'pose_appearance', 'tiny')
OPTIONS = ('appearance', 'pretrain', 'finetune', 'nK')
SYNTHETIC_APPEARANCE_DIM = 64  # lart_jax.synthetic.SyntheticConfig.appearance_dim


def get_config(arg: str = 'pose') -> ml_collections.ConfigDict:
  parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
  variant = parts[0] if parts else 'pose'
  options = parts[1:]
  if variant not in VARIANTS:
    raise ValueError(f'configs/lart.py: unknown variant {variant!r}; choose from {VARIANTS}')
  for o in options:
    if o not in OPTIONS[:-1] and not re.fullmatch(r'n[1-9]\d*', o):
      raise ValueError(f'configs/lart.py: unknown option {o!r}; options are {OPTIONS} '
                       f'(nK = K people, e.g. n1)')
  if 'pretrain' in options and 'finetune' in options:
    raise ValueError('configs/lart.py: choose one of the options pretrain and finetune')

  config = common.base_config()
  config.task = 'lart'
  config.variant = arg or 'pose'
  with_appearance = variant == 'pose_appearance' or 'appearance' in options

  # --- data (lart_jax/data.py reads these) --------------------------------------------------
  d = config.data
  d.input = ''                    # folder of tracklet pickles; '' = synthetic videos in memory
  d.eval_input = ''               # held-out folder ('' = held-out synthetic videos)
  d.max_frames = 128              # T: window length, at most 128
  d.num_people = 5                # N: the person of interest + N - 1 others
  d.appearance_dim = ml_collections.FieldReference(
      SYNTHETIC_APPEARANCE_DIM if with_appearance else 0)  # Da; 0 = pose only
  d.num_classes = 60              # 60: the 80 AVA ids mapped to the evaluated classes
  d.fps = 30.0                    # frame rate (AVA timestamps = frame id / fps)
  d.require_labels = False        # a tracklet without label keys is an error (else unlabeled)
  # Training's other people: 'nearest' (the N-1 nearest, nearest first, as at evaluation) or
  # 'random' (the paper's random subset in random slots; evaluation still takes the nearest).
  d.context = 'nearest'
  d.worker_count = 0              # Grain worker processes
  d.synthetic_videos = 64         # synthetic training videos
  d.synthetic_eval_videos = 16    # held-out synthetic videos
  d.synthetic_seed = 0

  # --- model ----------------------------------------------------------------------------------
  m = config.model
  m.arch = 'gpt2'                 # LayerNorm, GELU MLP, biases (toto_jax.model.Block)
  m.causal = False                # bidirectional attention over all T x N tokens
  m.dim = 512
  m.num_heads = 16
  m.num_kv_heads = 0              # 0 = num_heads
  m.num_layers = 16
  m.mlp_dim = 4 * 512
  m.embed_hidden = 256            # hidden width of the pose / appearance MLPs
  m.appearance_dim = d.get_ref('appearance_dim')
  m.num_classes = 60              # evaluated AVA classes
  m.pseudo_classes = 0            # > 0: a second head over that many pseudo-label classes
  m.mask_ratio = 0.4              # fraction of detected tokens replaced by the mask token
  m.dropout = 0.1
  m.drop_path = 0.0
  m.norm_eps = 1e-5
  m.rope_base = 10_000.0          # unused by gpt2 (kept for the shared block's config)
  m.dtype = 'float32'             # 'bfloat16' on accelerators
  m.remat_policy = 'none'
  m.scan_layers = True            # False: unrolled layers (toto_jax.model.layer_stack)
  m.attention_impl = ml_collections.config_dict.placeholder(str)

  # --- loss -----------------------------------------------------------------------------------
  config.loss = ml_collections.ConfigDict()
  config.loss.gt_weight = 1.0     # weight of ground-truth tokens (label_level 2)
  config.loss.pseudo_weight = 1.0  # weight of pseudo-labelled tokens (label_level 1)

  # --- optimisation (Table 3.6) ---------------------------------------------------------------
  t = config.train
  t.global_batch_size = 64
  t.lr = 1e-3
  t.b1, t.b2 = 0.9, 0.95
  t.weight_decay = 0.05
  t.end_lr_ratio = 0.0
  t.clip_norm = 1.0
  t.epochs = 30                   # > 0: total_steps = epochs x examples / batch
  t.warmup_epochs = 5.0
  t.total_steps = 1000            # used when epochs = 0
  t.warmup_steps = 50
  t.layer_decay = 0.0             # > 0: layer-wise lr decay (fine-tuning: 0.9)
  config.checkpoint.every_steps = 1000
  config.log.every_steps = 20
  config.eval.every_steps = 500
  config.eval.batches = 4

  # --- inference and AVA evaluation (launch/evaluate.py) --------------------------------------
  config.evaluate = ml_collections.ConfigDict()
  config.evaluate.average_frames = 12  # scores averaged over this many tokens around a keyframe
  config.evaluate.keyframe_hz = 1.0    # AVA keyframes: one per second (frame id % fps/hz == 0)
  config.evaluate.batch_size = 16
  config.evaluate.step = -1            # checkpoint step (-1 = newest)
  config.evaluate.groundtruth = ''     # AVA ground-truth CSV ('' = written for synthetic data)
  config.evaluate.labelmap = ''        # label map ('' = the 60 evaluated classes)
  config.evaluate.exclusions = ''      # excluded timestamps CSV ('' = none)
  config.evaluate.output = 'detections.csv'  # in the workdir
  # Score only the people with a ground-truth label at the keyframe (as with ground-truth boxes);
  # False scores every tracked person, as with detected boxes.
  config.evaluate.annotated_only = False

  if variant == 'tiny':
    d.max_frames = 32
    d.synthetic_videos = 16
    d.synthetic_eval_videos = 4
    m.dim = 32
    m.num_heads = 2
    m.num_layers = 2
    m.mlp_dim = 64
    m.embed_hidden = 32
    t.global_batch_size = 16
    t.epochs = 0
    t.total_steps = 200
    t.warmup_steps = 10
    t.lr = 3e-3
    config.checkpoint.every_steps = 100
    config.log.every_steps = 10
    config.eval.every_steps = 100
    config.eval.batches = 2
    config.evaluate.batch_size = 8

  for o in options:
    if o.startswith('n') and o[1:].isdigit():
      d.num_people = int(o[1:])
  if 'pretrain' in options:       # Kinetics-style: pseudo-labels only, masked modelling
    config.loss.gt_weight = 0.0
    config.loss.pseudo_weight = 1.0
    m.mask_ratio = 0.4
  if 'finetune' in options:       # AVA-style: ground truth only, no masking
    config.loss.gt_weight = 1.0
    config.loss.pseudo_weight = 0.0
    m.mask_ratio = 0.0
    m.drop_path = 0.1
    t.layer_decay = 0.9
  return config
