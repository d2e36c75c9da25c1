"""Toto pre-training: next-token prediction over visual tokens (seed 000, chapter 4).

Run (CPU, the built-in synthetic token videos; ~4 minutes on 2 cores, the loss falls from
ln(68) = 4.2 to about 1.7, the next-frame token accuracy rises to ~65%):

  python -m launch.train --config configs/toto.py:tiny --workdir runs/toto_tiny

Variants (``configs/toto.py:VARIANT``): ``tiny`` (CPU demo), ``base`` / ``large`` / ``1b``
(Table 4.1), ``a1``..``a6`` (muP scaling family, Table 4.15), and any of them with ``,gpt2`` for the
GPT-2 architecture of Table 4.6 (e.g. ``configs/toto.py:base,gpt2``). ``python -m launch.params``
prints every variant's parameter count against the paper's.

MLP width rule (the thesis does not state one; each rule below reproduces its parameter counts):
``mlp_dim = ceil(mlp_ratio * dim / 256) * 256`` with ``mlp_ratio`` 4 for base/large (SwiGLU at 4d),
8/3 for 1b (the LLaMA rule; 2048 -> 5632, the TinyLlama-1.1B shape) and 14/3 for a1..a6 (which
matches Table 4.15's non-embedding counts of ~18 L d^2 to within 4%).
"""

from __future__ import annotations

import math

import ml_collections

from configs import common

# name: (dim, heads, layers, mlp_ratio, paper params, counted as)
VARIANTS = {
    'tiny': (128, 4, 4, 4.0, None, None),
    'base': (768, 12, 12, 4.0, 120e6, 'non_embedding'),
    'large': (1024, 16, 16, 4.0, 280e6, 'non_embedding'),
    '1b': (2048, 16, 22, 8 / 3, 1.1e9, 'non_embedding'),
    'a1': (256, 16, 12, 14 / 3, 14.8e6, 'non_embedding'),
    'a2': (512, 16, 16, 14 / 3, 77.2e6, 'non_embedding'),
    'a3': (768, 16, 20, 14 / 3, 215e6, 'non_embedding'),
    'a4': (1024, 16, 24, 14 / 3, 458e6, 'non_embedding'),
    'a5': (1536, 16, 28, 14 / 3, 1.2e9, 'non_embedding'),
    'a6': (1792, 16, 32, 14 / 3, 1.9e9, 'non_embedding'),
}

# Table 4.2 mixture: fraction of each batch per source.
PAPER_MIXTURE = {'imagenet': (0.2, 'image'), 'ego4d': (0.1, 'video'),
                 'kinetics': (0.1, 'video'), 'howto100m': (0.6, 'video')}


def mlp_width(dim: int, ratio: float, multiple: int = 256) -> int:
  return int(math.ceil(ratio * dim / multiple) * multiple)


def model_config(variant: str, arch: str = 'llama') -> ml_collections.ConfigDict:
  dim, heads, layers, ratio, _, _ = VARIANTS[variant]
  m = ml_collections.ConfigDict()
  m.arch = arch                  # 'llama' | 'gpt2'
  m.vocab_size = 8192 + 4        # dVAE codebook + 4 reserved ids (pad, video start, end, image start)
  m.dim = dim
  m.num_heads = heads
  m.num_kv_heads = heads         # < num_heads for grouped key/value heads
  m.num_layers = layers
  m.mlp_dim = mlp_width(dim, ratio) if arch == 'llama' else 4 * dim
  m.max_len = 4097               # model input: 16 frames x 256 tokens + start marker
  m.rope_base = 10_000.0
  m.norm_eps = 1e-6 if arch == 'llama' else 1e-5
  m.dtype = 'float32'            # compute dtype of matmuls; 'bfloat16' on accelerators
  m.remat_policy = 'none'        # none | full | dots | dots_no_batch
  # Layers under nn.scan (stacked parameters, one compiled layer: pods) or unrolled, each with
  # its own parameters (faster steps and decoding on CPU; toto_jax.model.layer_stack).
  m.scan_layers = True
  m.causal = True
  # None (auto) | 'xla' | 'cudnn' | 'blockwise' | 'fused_cpu' (toto_jax/attention.py)
  m.attention_impl = ml_collections.config_dict.placeholder(str)
  # muP (toto_jax/mup.py): width-scaled init, 1/d attention, 1/width readout, per-layer lrs.
  # On for the a1..a6 scaling family (Table 4.15), tuned at a1's width.
  m.mup = variant.startswith('a')
  m.mup_base_width = 256
  m.dropout = 0.0                # residual dropout / stochastic depth (fine-tuning; 0 in pre-training)
  m.drop_path = 0.0
  return m


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  parts = [p for p in arg.split(',') if p]
  variant = parts[0] if parts else 'tiny'
  arch = 'gpt2' if 'gpt2' in parts[1:] else 'llama'
  if variant not in VARIANTS:
    raise ValueError(f'configs/toto.py: unknown variant {variant!r}; choose from {sorted(VARIANTS)}')

  config = common.base_config()
  config.task = 'toto'
  config.variant = variant
  config.model = model_config(variant, arch)

  d = config.data
  d.frames = 16
  d.frame_h = 16
  d.frame_w = 16
  d.codebook_size = 8192
  d.synthetic_clips = 4096
  d.worker_count = 0
  d.eval_records = 256           # first records of each file source held out for the eval hook
  d.sources = ml_collections.ConfigDict()
  for name, (weight, kind) in PAPER_MIXTURE.items():
    d.sources[name] = ml_collections.ConfigDict(
        {'pattern': f'data/tokens/{name}/*.array_record', 'weight': weight, 'kind': kind})

  t = config.train
  t.global_batch_size = 256            # sequences per optimizer step: 256 x 4096 = 1M tokens
  t.microbatch_size = 16               # sequences per forward/backward (all devices); accumulation fills the rest
  t.total_steps = 1_000_000            # ~1T tokens
  t.lr = 3e-4
  t.warmup_steps = 2000
  t.b1, t.b2 = 0.9, 0.95
  t.weight_decay = 0.1
  t.clip_norm = 1.0

  if config.model.mup:
    t.lr = 2 ** -7                     # the muP optimum at every width (Table 4.15)

  if variant == '1b':
    # Pod sharding (the paper's scale): the whole 256-sequence batch in one forward/backward,
    # FSDP over every chip (one or more sequences per chip), layers recomputed in the backward
    # pass. `python -m launch.aot --config configs/toto.py:1b --topology v5p-128` (and v5e-256)
    # compiles this step for the pod and checks it fits per-chip HBM (README, "TPU pods").
    t.microbatch_size = 0
    config.model.remat_policy = 'full'

  if variant == 'tiny':
    # CPU demo: 8 frames of 6x6 codes from a 64-code book; 16 sequences of 289 tokens per step.
    config.model.max_len = 8 * 6 * 6 + 1
    config.model.vocab_size = 64 + 4
    d.frames, d.frame_h, d.frame_w = 8, 6, 6
    d.codebook_size = 64
    d.synthetic_clips = 4096
    d.eval_records = 64
    d.sources = ml_collections.ConfigDict(
        {'synthetic': {'pattern': 'synthetic', 'weight': 1.0, 'kind': 'video'}})
    t.global_batch_size = 16
    t.microbatch_size = 16
    t.total_steps = 300
    t.lr = 1e-2
    t.warmup_steps = 30
    t.weight_decay = 0.0
    config.checkpoint.every_steps = 100
    config.log.every_steps = 10
    config.eval.every_steps = 100
    config.eval.batches = 4
  return config
