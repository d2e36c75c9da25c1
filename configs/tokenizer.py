r"""Visual tokenizers: the trainable VQ-VAE, and the released dVAE / VQGAN for tokenization jobs.

Train the VQ tokenizer (CPU, the built-in synthetic videos written by ``make demo`` or
``python -m tokenizers_jax.synthetic_video``; a few minutes on 2 cores, held-out PSNR ~24 dB with
most of the 64 codes in use)::

  python -m launch.train --config configs/tokenizer.py:vq_tiny --workdir runs/vq_tiny \
      --config.data.input=runs/demo/videos/train --config.data.eval_input=runs/demo/videos/val

Tokenize a folder of videos (or ``tfds:NAME/SPLIT``) into token shards for Toto::

  python -m launch.tokenize --config configs/tokenizer.py:vq_tiny \
      --config.tokenizer.weights=runs/vq_tiny --input runs/demo/videos/train --output runs/tokens

Variants:

* ``vq_tiny``: the CPU demo; 48 px frames -> 6x6 codes from a 64-entry codebook.
* ``vq``: 128 px frames -> 16x16 codes from 1024 entries (the paper's token grid).
* ``dvae``: DALL-E dVAE (8192 codes, 128 px -> 16x16, the paper's tokenizer). Needs
  ``--config.tokenizer.weights=ENCODER_DECODER.npz`` (see ``tokenizers_jax/dvae.py``).
* ``vqgan_1k`` / ``vqgan_16k``: taming-transformers VQGAN f16 (256 px -> 16x16). Needs
  ``--config.tokenizer.weights=vqgan.npz`` (see ``tokenizers_jax/vqgan.py``).
"""

from __future__ import annotations

import ml_collections

from configs import common

# name: (kind, resolution, codebook size, VQ channels)
VARIANTS = {
    'vq_tiny': ('vq', 48, 64, (16, 32, 64)),
    'vq': ('vq', 128, 1024, (64, 128, 256)),
    'dvae': ('dvae', 128, 8192, None),
    'vqgan_1k': ('vqgan', 256, 1024, None),
    'vqgan_16k': ('vqgan', 256, 16384, None),
}


def get_config(arg: str = 'vq_tiny') -> ml_collections.ConfigDict:
  variant = arg or 'vq_tiny'
  if variant not in VARIANTS:
    raise ValueError(f'configs/tokenizer.py: unknown variant {variant!r}; '
                     f'choose from {sorted(VARIANTS)}')
  kind, resolution, codebook, channels = VARIANTS[variant]

  config = common.base_config()
  config.task = 'vq_tokenizer'
  config.variant = variant
  # Tokenizer used by launch.tokenize: 'vq' loads a training workdir of this config, 'dvae' and
  # 'vqgan' a converted weight file (.npz, or a torch state dict when torch is installed).
  config.tokenizer = ml_collections.ConfigDict({'kind': kind, 'weights': ''})

  m = config.model
  m.codebook_size = codebook
  m.channels = list(channels or (64, 128, 256))
  m.res_blocks = 0 if variant == 'vq_tiny' else 1   # residual blocks at every stride
  m.mid_blocks = 2               # residual blocks at the coarsest stride
  m.embed_dim = 16 if variant == 'vq_tiny' else 64
  m.groups = 8
  m.commitment_beta = 0.25
  m.ema_decay = 0.95 if variant == 'vq_tiny' else 0.99
  m.restart_threshold = 1.0      # EMA count per step under which a code is restarted
  m.dtype = 'float32'

  d = config.data
  d.input = ''                   # DIR of videos or images, or tfds:NAME/SPLIT
  d.eval_input = ''              # held-out frames for the eval hook ('' = no eval)
  d.resolution = resolution      # short side resized to this, then an R x R crop
  d.frames_per_example = 4       # frames of one video per example (images: this many images)
  d.frame_stride = 8             # source frames between the frames of an example
  d.tfds_data_dir = ''
  d.worker_count = 0

  # launch.tokenize: clips of T frames, every ``stride``-th source frame (paper: T=16, stride 4).
  tk = config.tokenize = ml_collections.ConfigDict()
  tk.frames = 16
  tk.stride = 4
  tk.short_videos = 'pad'        # 'pad' (repeat the last frame) | 'skip'
  tk.max_clips_per_video = 1     # consecutive clips per video; 0 = all
  tk.crop = 'center'             # 'center' | 'random'
  tk.batch_frames = 256          # frames per encoder call
  tk.records_per_shard = 1024
  tk.source = ''                 # source name stored in each record ('' = input folder name)

  t = config.train
  t.global_batch_size = 32
  t.microbatch_size = 0
  t.total_steps = 20_000
  t.lr = 3e-4
  t.warmup_steps = 500
  t.weight_decay = 0.0
  t.b1, t.b2 = 0.9, 0.99
  t.clip_norm = 1.0
  config.checkpoint.every_steps = 1000
  config.eval.every_steps = 1000
  config.eval.batches = 4

  if variant == 'vq_tiny':
    tk.frames = 8
    t.global_batch_size = 8      # x 4 frames = 32 frames per step
    t.total_steps = 150
    t.lr = 2e-3
    t.warmup_steps = 15
    config.checkpoint.every_steps = 50
    config.log.every_steps = 10
    config.eval.every_steps = 50
    config.eval.batches = 2
  return config
