"""What a model package plugs into the trainer: the :class:`Task` protocol and the registry.

The trainer owns mesh, sharding, optimizer, checkpoints, logging and the loop; a task owns the
model, its loss and its data. ``config.task`` names the task; :func:`get_task` imports it lazily so
running Toto never imports LART.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable, Mapping, Protocol

import jax

# config.task -> "module:Class"
REGISTRY = {
    'toto': 'toto_jax.task:TotoTask',
    'toto_finetune': 'toto_jax.finetune:FinetuneTask',
    'vq_tokenizer': 'tokenizers_jax.task:VQTokenizerTask',
    'phalp_pose': 'phalp_jax.pose_task:PosePredictorTask',
    'lart': 'lart_jax.task:LartTask',
}


class Task(Protocol):
  """A trainable job. Arrays are numpy on the host side, jax inside ``init``/``loss``."""

  config: Any

  def validate(self) -> None:
    """Raises ``ConfigError`` naming the field for any task-specific misconfiguration."""

  def init(self, rng: jax.Array) -> Any:
    """Parameters, boxed with logical axis names (``nn.with_logical_partitioning``)."""

  def loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(loss_sum, aux)`` over one microbatch; ``aux['weight']`` is what the sum is over
    (tokens, examples), so accumulation over microbatches normalises exactly. Every other aux
    entry is a sum too and is logged divided by the weight.

    A task with non-trainable variables (optional ``init_model_state(rng)``, e.g. an EMA
    codebook) takes them as a fourth argument ``model_state`` and returns the updated ones as
    ``aux['model_state']``; the trainer threads them through microbatches and checkpoints them.
    """

  def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
    """Logical axes of each batch array, leading dimension ``act_batch``."""

  def train_data(self, *, seed: int, process_index: int, process_count: int,
                 batch_size: int) -> Any:
    """A Grain ``IterDataset`` of per-process batches (dicts of numpy arrays)."""

  def eval_data(self, *, process_index: int, process_count: int, batch_size: int,
                num_batches: int) -> Iterable[Mapping[str, Any]]:
    """A finite, deterministic list of per-process batches for the eval hook."""

  def train_flops_per_example(self) -> float:
    """Model FLOPs (forward + backward) for one example, for MFU."""

  def tokens_per_example(self) -> int:
    """Tokens one example contributes to throughput figures."""


def get_task(config) -> Task:
  name = config.task
  if name not in REGISTRY:
    from launch.sharding import ConfigError
    raise ConfigError(f'task: unknown task {name!r}; known tasks are {sorted(REGISTRY)}')
  module_name, cls_name = REGISTRY[name].split(':')
  return getattr(importlib.import_module(module_name), cls_name)(config)
