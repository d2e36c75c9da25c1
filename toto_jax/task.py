"""Toto pre-training as a trainer task: next-token NLL over token sequences (Eq. 4.1-4.2)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from toto_jax import data as token_data
from toto_jax.model import Toto


def param_counts(model_cfg) -> dict[str, int]:
  """Total, embedding (input table + output head) and non-embedding parameter counts."""
  shapes = jax.eval_shape(
      lambda: Toto(model_cfg).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
  shapes = shapes['params']  # Partitioned boxes are pytree nodes: leaves are the arrays
  size = lambda t: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(t)))
  total = size(shapes)
  embedding = size(shapes['embed']) + size(shapes['lm_head'])
  return {'total': total, 'embedding': embedding, 'non_embedding': total - embedding,
          'matmul': total - size(shapes['embed'])}


def next_token_loss(logits: jax.Array, targets: jax.Array, vocab_size: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sum of NLL, number of counted targets, number correct); pad targets (id 0) do not count.

  Logits of the padding rows of the vocabulary (ids >= vocab_size) are excluded from the softmax.
  """
  logits = logits.astype(jnp.float32)
  valid_vocab = jnp.arange(logits.shape[-1]) < vocab_size
  logits = jnp.where(valid_vocab, logits, -1e30)
  logz = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  weights = (targets != token_data.PAD).astype(jnp.float32)
  nll = (logz - target_logit) * weights
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
  return nll.sum(), weights.sum(), correct.sum()


class TotoTask:
  """Plugs the Toto decoder and the token-sequence pipeline into ``launch.train``."""

  def __init__(self, config):
    self.config = config
    self.model = Toto(config.model)

  # --- configuration -------------------------------------------------------------------------
  def validate(self) -> None:
    from launch.sharding import ConfigError
    m, d = self.config.model, self.config.data
    try:  # geometry, sources (globs match, first record decodes), synthetic settings
      token_data.validate_data_config(d)
    except ValueError as e:  # the data module's messages already name the data.* field
      raise ConfigError(str(e)) from None
    if m.arch not in ('llama', 'gpt2'):
      raise ConfigError(f"model.arch must be 'llama' or 'gpt2', got {m.arch!r}")
    if m.dim % m.num_heads:
      raise ConfigError(f'model.dim ({m.dim}) must be divisible by model.num_heads ({m.num_heads})')
    if (m.dim // m.num_heads) % 2:
      raise ConfigError(f'model.dim / model.num_heads = {m.dim // m.num_heads} must be even '
                        f'for rotary embeddings')
    kv = m.num_kv_heads or m.num_heads
    if m.num_heads % kv:
      raise ConfigError(f'model.num_kv_heads ({kv}) must divide model.num_heads ({m.num_heads})')
    needed = d.codebook_size + token_data.NUM_RESERVED
    if m.vocab_size < needed:
      raise ConfigError(f'model.vocab_size ({m.vocab_size}) must be at least data.codebook_size + '
                        f'{token_data.NUM_RESERVED} = {needed}')
    length = token_data.sequence_length(d) - 1
    if length > m.max_len:
      raise ConfigError(f'model.max_len ({m.max_len}) is shorter than the model input of '
                        f'{length} tokens (data.frames x frame_h x frame_w + 1)')
    if m.rope_base <= 0:
      raise ConfigError(f'model.rope_base must be positive, got {m.rope_base}')

  # --- model -----------------------------------------------------------------------------------
  def init(self, rng: jax.Array) -> Any:
    tokens = jnp.zeros((1, 8), jnp.int32)
    return self.model.init(rng, tokens)['params']

  def loss(self, params, batch: Mapping[str, jax.Array], rng: jax.Array):
    del rng  # no dropout in pre-training
    tokens = batch['tokens']
    logits = self.model.apply({'params': params}, tokens[:, :-1])
    nll, weight, correct = next_token_loss(logits, tokens[:, 1:], self.config.model.vocab_size)
    return nll, {'weight': weight, 'accuracy': correct}

  def lr_scales(self, params) -> Any:
    """muP per-parameter learning-rate multipliers (:func:`toto_jax.mup.lr_scales`) when
    ``model.mup`` is on; ``None`` (one learning rate for all) otherwise."""
    from toto_jax import mup
    if not mup.enabled(self.config.model):
      return None
    return mup.lr_scales(params, self.config.model)

  def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
    return {'tokens': ('act_batch', None)}

  # --- data ------------------------------------------------------------------------------------
  def train_data(self, *, seed: int, process_index: int, process_count: int, batch_size: int):
    return token_data.build_train_dataset(self.config.data, seed=seed,
                                          process_index=process_index,
                                          process_count=process_count, batch_size=batch_size)

  def eval_data(self, *, process_index: int, process_count: int, batch_size: int,
                num_batches: int) -> Iterable[Mapping[str, Any]]:
    return token_data.build_eval_dataset(self.config.data, process_index=process_index,
                                         process_count=process_count, batch_size=batch_size,
                                         num_batches=num_batches)

  # --- accounting ------------------------------------------------------------------------------
  def tokens_per_example(self) -> int:
    return token_data.sequence_length(self.config.data) - 1

  def train_flops_per_example(self) -> float:
    from launch.flops import decoder_train_flops_per_token
    m = self.config.model
    length = self.tokens_per_example()
    per_token = decoder_train_flops_per_token(param_counts(m)['matmul'], m.num_layers, length,
                                              m.dim, causal=m.causal)
    return per_token * length
