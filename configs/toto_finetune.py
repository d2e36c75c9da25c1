r"""Toto fine-tuning: next-token loss + a gradient-stopped attention probe, layer-wise lr decay.

Run (CPU, on the demo's outputs: ``python -m launch.demo --workdir runs/demo`` first; 6 sprite
classes from ``labels.csv``, the backbone loaded from the demo's pre-training run):

  python -m launch.train --config configs/toto_finetune.py:tiny --workdir runs/demo/finetune \
      --config.train.init_from=runs/demo/toto_tiny

The trainer prints ``[train] initialised 12 parameter arrays from runs/demo/toto_tiny`` (the
whole backbone; only ``probe/...`` is fresh) and logs ``train/probe_loss``,
``train/probe_accuracy``, ``train/next_token_loss`` and their ``eval/`` counterparts. Note: the
demo's 6x6-token clips carry almost no class information (probes on the frozen demo run and a
bag-of-codes classifier are at chance on the held-out clips), so expect the probe near chance
there. ``tiny,synthetic`` labels each clip by its main object's direction of motion (frozen
probes of a 150-step tiny run are at chance on it too: the label needs motion, which those features
do not expose linearly).
Add ``--config.model.causal=False`` for full attention at fine-tuning (Table 4.x: 82.6 vs 82.2).

Variants: ``tiny`` (the demo's token shards, 6 classes), ``tiny,synthetic`` (the built-in
synthetic token clips, 4 classes: the main object's direction), ``base`` / ``large`` / ``1b``
(the pre-training shapes; set ``data.sources`` and ``probe.num_classes`` for your labelled data).
The probe reads layer ``probe.layer`` (default: half the depth, where probing peaks).
"""

from __future__ import annotations

import ml_collections

from configs import toto
from toto_jax import synthetic

DEMO_TOKENS = 'runs/demo/tokens'
DEMO_CLASSES = 6


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  parts = [p for p in arg.split(',') if p]
  variant = parts[0] if parts else 'tiny'
  flags = set(parts[1:])
  unknown = flags - {'synthetic', 'gpt2'}
  if unknown:
    raise ValueError(f'configs/toto_finetune.py: unknown option(s) {sorted(unknown)}; '
                     f"use 'synthetic' or 'gpt2'")
  config = toto.get_config(','.join([variant] + (['gpt2'] if 'gpt2' in flags else [])))
  config.task = 'toto_finetune'

  config.probe = ml_collections.ConfigDict()
  config.probe.layer = max(1, config.model.num_layers // 2)  # 1-based depth of the probed layer
  config.probe.heads = 1
  config.probe.num_classes = 1000
  config.probe.loss_weight = 1.0

  t = config.train
  t.layer_decay = 0.9
  t.init_from = ''                  # the pre-training run (required in practice)
  t.init_from_prefix = 'backbone'   # where the pre-trained tree sits in this model
  t.lr = 6e-5                       # thesis: probes trained 90 epochs at lr 6e-5
  t.weight_decay = 0.05
  t.total_steps = 100_000
  t.warmup_steps = 1000

  if variant == 'tiny':
    d = config.data
    if 'synthetic' in flags:
      config.probe.num_classes = synthetic.NUM_DIRECTIONS
    else:
      d.sources = ml_collections.ConfigDict({'videos': {
          'pattern': f'{DEMO_TOKENS}/train/*.array_record',
          'eval_pattern': f'{DEMO_TOKENS}/val/*.array_record', 'weight': 1.0, 'kind': 'video'}})
      config.probe.num_classes = DEMO_CLASSES
    t.total_steps = 200
    t.warmup_steps = 20
    t.lr = 3e-3
    t.weight_decay = 0.0
    config.checkpoint.every_steps = 100
    config.eval.every_steps = 50
    config.eval.batches = 4
  return config
