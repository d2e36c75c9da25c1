"""LART: a bidirectional transformer over (frame, person) tokens of 3D-pose tracklets
(DESIGN section 7; seed 000 chapter 3, seed 001).

One token per (frame t, person n) of a window of ``T <= 128`` frames and ``N`` people, the person
of interest in slot 0:

* embedding: the 229-d pose vector through an MLP with two hidden layers (``embed_hidden``, 256)
  to the model width (pose only), or to half of it, concatenated with the appearance vector
  through its own MLP to the other half (``appearance_dim > 0``: 256 + 256 = 512);
* positions: 2D sine-cosine over (time, track slot), half of the width each, added to the tokens;
* visibility: a token is *visible* when the person is detected at that frame and the token is not
  masked. Every other token (no detection, a masked token in pre-training, a gap at inference) is
  replaced by one learned mask token: it attends to the visible tokens (so it gets a prediction)
  but no token attends to it (``key_mask``), so its input never changes another token's output;
* the body: the shared pre-norm transformer of ``toto_jax.model.layer_stack`` (GPT-2 blocks,
  bidirectional), dropout and drop path when training;
* heads: per-token logits over the ``num_classes`` (60) evaluated AVA classes, and optionally a
  second head over ``pseudo_classes`` pseudo-label classes (a larger label space).

Every parameter carries logical axis names (``embed``, ``mlp``, ``heads``, ``layers``, ``vocab``
for class outputs); the main activations carry ``act_*`` names.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from toto_jax.model import DenseGeneral, compute_dtype, layer_stack, norm, sincos_positions

Array = jax.Array

POSE_DIM = 229
MAX_FRAMES = 128


# ---------------------------------------------------------------------------------------------
# Positions and masks
# ---------------------------------------------------------------------------------------------

def positions_2d(num_frames: int, num_people: int, dim: int) -> np.ndarray:
  """``[T, N, dim]`` sine-cosine codes: the first half encodes the frame, the second the track
  slot (0 = person of interest)."""
  if dim % 4:
    raise ValueError(f'model.dim ({dim}) must be divisible by 4 for the 2D sine-cosine encoding')
  half = dim // 2
  time = sincos_positions(num_frames, half)[:, None, :]
  track = sincos_positions(num_people, half)[None, :, :]
  return np.concatenate([np.broadcast_to(time, (num_frames, num_people, half)),
                         np.broadcast_to(track, (num_frames, num_people, half))], axis=-1)


def random_token_mask(rng: Array, detected: Array, ratio: float) -> Array:
  """Bool mask of the same shape as ``detected``: each detected token independently with
  probability ``ratio`` (the pre-training mask; 0 gives no mask)."""
  if ratio <= 0:
    return jnp.zeros_like(detected, dtype=bool)
  return detected & jax.random.bernoulli(rng, ratio, detected.shape)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class FeatureMlp(nn.Module):
  """Two hidden GELU layers of ``hidden`` units, then a projection to ``out`` (a token part)."""
  hidden: int
  out: int
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d_in = x.shape[-1]
    x = nn.gelu(DenseGeneral((d_in,), (self.hidden,), ('input', 'mlp'), True, self.dtype,
                             name='fc1')(x), approximate=True)
    x = nn.gelu(DenseGeneral((self.hidden,), (self.hidden,), ('mlp', 'mlp_out'), True,
                             self.dtype, name='fc2')(x), approximate=True)
    return DenseGeneral((self.hidden,), (self.out,), ('mlp', 'embed'), True, self.dtype,
                        name='proj')(x)


class Lart(nn.Module):
  """``(pose [B,T,N,229], appearance [B,T,N,Da], detected [B,T,N], masked [B,T,N])`` -> logits.

  Returns ``{'logits': [B,T,N,num_classes]}`` (float32) and, with ``pseudo_classes > 0``,
  ``'pseudo_logits': [B,T,N,pseudo_classes]``. ``masked`` (None = nothing masked) marks tokens to
  replace by the mask token; undetected tokens are replaced whatever it says. ``deterministic``
  False turns on dropout and drop path (needs a ``'dropout'`` rng).
  """
  config: Any

  @nn.compact
  def __call__(self, pose: Array, appearance: Array | None, detected: Array,
               masked: Array | None = None, deterministic: bool = True) -> dict[str, Array]:
    cfg = self.config
    dtype = compute_dtype(cfg)
    b, t, n, _ = pose.shape
    d = cfg.dim
    if cfg.appearance_dim:
      half = d // 2
      x = jnp.concatenate([
          FeatureMlp(cfg.embed_hidden, half, dtype, name='pose_mlp')(pose),
          FeatureMlp(cfg.embed_hidden, d - half, dtype, name='appearance_mlp')(appearance)],
          axis=-1)
    else:
      x = FeatureMlp(cfg.embed_hidden, d, dtype, name='pose_mlp')(pose)

    visible = detected if masked is None else detected & ~masked
    mask_token = self.param('mask_token', nn.with_logical_partitioning(
        nn.initializers.normal(stddev=0.02), ('embed',)), (d,), jnp.float32)
    x = jnp.where(visible[..., None], x, mask_token.astype(dtype))
    x = x + jnp.asarray(positions_2d(t, n, d), dtype)
    x = x.reshape(b, t * n, d)
    x = nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_embed'))

    positions = jnp.broadcast_to(jnp.arange(t * n, dtype=jnp.int32), (b, t * n))  # unused: gpt2
    x, _ = layer_stack(cfg, deterministic=deterministic)(x, positions,
                                                         visible.reshape(b, t * n))
    x = norm(cfg, 'final_norm')(x)
    out = {'logits': DenseGeneral((d,), (cfg.num_classes,), ('embed', 'vocab'), True, dtype,
                                  name='head')(x).astype(jnp.float32).reshape(b, t, n, -1)}
    if cfg.pseudo_classes:
      out['pseudo_logits'] = DenseGeneral(
          (d,), (cfg.pseudo_classes,), ('embed', 'vocab'), True, dtype,
          name='pseudo_head')(x).astype(jnp.float32).reshape(b, t, n, -1)
    return out


HEAD_NAMES = ('head', 'pseudo_head', 'final_norm')  # full learning rate under layer-wise decay
