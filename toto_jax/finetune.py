"""Fine-tuning Toto with a classification probe as a trainer task (seed 000, sections 4.3-4.4).

The model is the pre-trained decoder under ``backbone`` plus an attention probe (one learned
query, ``W_k``, ``W_v``, linear; :class:`toto_jax.probe.AttentionProbe`) under ``probe`` that reads
the residual stream after layer ``probe.layer``. The loss is the next-token loss plus
``probe.loss_weight`` times the probe's cross-entropy, with ``jax.lax.stop_gradient`` on the
features entering the probe: classification trains the probe and never moves the backbone, which
keeps learning only from next-token prediction. Learning rates decay by ``train.layer_decay``
(0.9) per layer from the top (:func:`launch.optim.layer_decay_scales`); the probe and the
next-token head (``final_norm``, ``lm_head``) train at the full rate. ``model.causal=False`` runs
the backbone with full attention (the thesis fine-tunes with full attention: 82.6 vs 82.2 causal on
ImageNet).

Data: the labelled clips of ``data.sources`` (token shards whose records carry a ``label``, e.g.
from ``labels.csv`` at tokenization, or the synthetic source whose label is the main object's
direction); unlabelled records are skipped. Batches are ``{'tokens': [B, L], 'label': [B]}``.

Start from a pre-training run with ``train.init_from=RUN`` (``configs/toto_finetune.py`` sets
``train.init_from_prefix='backbone'``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from toto_jax import data as token_data
from toto_jax import synthetic
from toto_jax.model import Toto
from toto_jax.probe import AttentionProbe
from toto_jax.task import TotoTask, next_token_loss


class TotoWithProbe(nn.Module):
  """Toto (``backbone``) + an attention probe (``probe``) on layer ``probe_layer`` (1-based).

  Returns ``(next-token logits [B, L, V], class logits [B, num_classes])``; the probe sees the
  layer's features of every position but the first (the start marker), gradient-stopped.
  """
  config: Any
  num_classes: int
  probe_layer: int
  probe_heads: int = 1

  @nn.compact
  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits, hidden = Toto(self.config, name='backbone')(tokens, return_hidden=True)
    features = jax.lax.stop_gradient(hidden[self.probe_layer - 1][:, 1:].astype(jnp.float32))
    class_logits = AttentionProbe(self.num_classes, num_heads=self.probe_heads,
                                  name='probe')(features)
    return logits, class_logits.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Labelled clips: the token pipeline's sources and held-out rules, plus each record's label
# ---------------------------------------------------------------------------------------------

class _LabelledWindow:
  """Record -> ``{'tokens', 'label'}`` of one ``T``-frame window; ``None`` (dropped by Grain) for
  unlabelled or short clips."""

  def __init__(self, ctx):
    self.ctx = ctx

  def __call__(self, element, rng: np.random.Generator | None = None):
    rec = self.ctx.decode(element)
    codes, t = rec['codes'], self.ctx.geo.frames
    if rec['label'] < 0 or codes.shape[0] < t:
      return None
    n = codes.shape[0]
    start = int(rng.integers(0, n - t + 1)) if rng is not None and n > t else 0
    return {'tokens': token_data.codes_to_tokens(codes[start:start + t], 'video'),
            'label': np.int32(rec['label'])}


def _sources(data_cfg, process_index: int, process_count: int, batch_size: int):
  geo, specs = token_data._validate_common(  # pylint: disable=protected-access
      data_cfg, process_index, process_count, batch_size)
  for spec in specs:
    if spec.kind != 'video':
      raise ValueError(f"data.sources.{spec.name}.kind must be 'video' for fine-tuning with "
                       f'labels, got {spec.kind!r}')
  return geo, specs


def _synthetic(data_cfg, geo, count: int, start_index: int = 0):
  return synthetic.SyntheticTokenClips(count, geo.frames, geo.h, geo.w, geo.codebook_size,
                                       seed=int(data_cfg.get('synthetic_seed', 0)),
                                       start_index=start_index)


def build_labelled_train_dataset(data_cfg, *, seed: int, process_index: int, process_count: int,
                                 batch_size: int) -> grain.IterDataset:
  """Infinite shuffled stream of ``{'tokens': int32 [B, L], 'label': int32 [B]}`` from the
  training records of ``data.sources`` (the held-out ones excluded as in pre-training)."""
  geo, specs = _sources(data_cfg, process_index, process_count, batch_size)
  eval_records = int(data_cfg.get('eval_records', 0))
  datasets = []
  for k, spec in enumerate(specs):
    ctx = token_data._SourceCtx(spec, geo)  # pylint: disable=protected-access
    if spec.synthetic:
      src = _synthetic(data_cfg, geo, int(data_cfg.synthetic_clips))
    else:
      src = grain.sources.ArrayRecordDataSource(list(spec.files))
    ds = grain.MapDataset.source(src).map_with_index(token_data._with_index)  # pylint: disable=protected-access
    if not spec.synthetic and eval_records and not spec.eval_files:
      ds = ds[eval_records:]
    ds = token_data.shard_for_process(ds, f'data.sources.{spec.name}', process_index,
                                      process_count, 1)
    ds = ds.shuffle(seed=token_data.derive_seed(seed, k, 1))
    ds = ds.repeat(None).random_map(_LabelledWindow(ctx), seed=token_data.derive_seed(seed, k, 2))
    datasets.append(ds)
  return token_data._finish(datasets, specs, data_cfg, batch_size,  # pylint: disable=protected-access
                            int(data_cfg.get('worker_count', 0)))


def build_labelled_eval_dataset(data_cfg, *, process_index: int, process_count: int,
                                batch_size: int, num_batches: int) -> list[dict[str, np.ndarray]]:
  """``num_batches`` deterministic batches of held-out labelled clips (first-``T`` windows)."""
  geo, specs = _sources(data_cfg, process_index, process_count, batch_size)
  eval_records = int(data_cfg.get('eval_records', 0))
  datasets = []
  for spec in specs:
    ctx = token_data._SourceCtx(spec, geo)  # pylint: disable=protected-access
    if spec.synthetic:
      n_eval = eval_records or num_batches * batch_size * process_count
      src = _synthetic(data_cfg, geo, n_eval, start_index=int(data_cfg.synthetic_clips))
    elif spec.eval_files:
      ctx = token_data._SourceCtx(spec, geo, spec.eval_files, spec.eval_counts)  # pylint: disable=protected-access
      src = grain.sources.ArrayRecordDataSource(list(spec.eval_files))
    else:
      src = grain.sources.ArrayRecordDataSource(list(spec.files))
    ds = grain.MapDataset.source(src).map_with_index(token_data._with_index)  # pylint: disable=protected-access
    if not spec.synthetic and not spec.eval_files and eval_records:
      ds = ds[:eval_records]
    ds = token_data.shard_for_process(ds, f'data.sources.{spec.name} (eval)', process_index,
                                      process_count, 1)
    ds = ds.repeat(None, reseed_each_epoch=False).map(_LabelledWindow(ctx))
    datasets.append(ds)
  it = iter(token_data._finish(datasets, specs, data_cfg, batch_size, workers=0))  # pylint: disable=protected-access
  try:
    return [next(it) for _ in range(num_batches)]
  finally:
    it.close()


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------

class FinetuneTask(TotoTask):
  """Next-token loss + gradient-stopped probe classification, layer-wise lr decay."""

  def __init__(self, config):
    super().__init__(config)
    p = config.probe
    self.model = TotoWithProbe(config.model, int(p.num_classes), int(p.layer),
                               int(p.get('heads', 1)))

  def validate(self) -> None:
    from launch.sharding import ConfigError
    super().validate()
    p, m = self.config.probe, self.config.model
    if not 1 <= p.layer <= m.num_layers:
      raise ConfigError(f'probe.layer must be a depth in 1..model.num_layers={m.num_layers}, '
                        f'got {p.layer}')
    if p.num_classes < 2:
      raise ConfigError(f'probe.num_classes must be >= 2, got {p.num_classes}')
    heads = p.get('heads', 1)
    if heads < 1 or m.dim % heads:
      raise ConfigError(f'probe.heads ({heads}) must be >= 1 and divide model.dim ({m.dim})')
    if p.loss_weight < 0:
      raise ConfigError(f'probe.loss_weight must be >= 0, got {p.loss_weight}')
    if not 0 < self.config.train.layer_decay <= 1:
      raise ConfigError(f'train.layer_decay must be in (0, 1], got {self.config.train.layer_decay}')
    try:
      _sources(self.config.data, 0, 1, 1)
    except ValueError as e:
      raise ConfigError(str(e)) from None

  # --- model -----------------------------------------------------------------------------------
  def terms(self, params, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums over the batch: next-token NLL, counted targets, correct tokens, probe cross-entropy
    and correct probe predictions."""
    tokens, labels = batch['tokens'], batch['label']
    logits, class_logits = self.model.apply({'params': params}, tokens[:, :-1])
    nll, weight, correct = next_token_loss(logits, tokens[:, 1:], self.config.model.vocab_size)
    ce = optax.softmax_cross_entropy_with_integer_labels(class_logits, labels)
    hits = (jnp.argmax(class_logits, -1) == labels).astype(jnp.float32)
    return {'nll': nll, 'weight': weight, 'correct': correct, 'probe_loss': ce.sum(),
            'probe_correct': hits.sum()}

  def loss(self, params, batch: Mapping[str, jax.Array], rng: jax.Array):
    """``(nll + w * tokens_per_example * ce, aux)``: the trainer divides by the token count, so
    the optimised value is ``mean NLL + w * mean CE``; per-example aux entries are scaled the same
    way so they log as means over examples."""
    del rng
    t = self.terms(params, batch)
    per_example = t['weight'] / batch['label'].shape[0]  # counted targets per clip
    probe = t['probe_loss'] * per_example
    total = t['nll'] + self.config.probe.loss_weight * probe
    return total, {'weight': t['weight'], 'accuracy': t['correct'], 'next_token_loss': t['nll'],
                   'probe_loss': probe, 'probe_accuracy': t['probe_correct'] * per_example}

  def lr_scales(self, params) -> Any:
    """Layer ``i`` of the backbone ``decay ** (L - i)``, embeddings ``decay ** (L + 1)``, the
    next-token head and the probe 1; times muP's multipliers (:func:`toto_jax.mup.lr_scales`)
    when the backbone was trained with ``model.mup``, so its hidden matrices keep their width
    scaling under layer decay."""
    from launch import optim
    from toto_jax import mup
    scales = {k: jax.tree_util.tree_map(lambda _: np.float32(1.0), v) for k, v in params.items()}
    backbone = optim.layer_decay_scales(
        params['backbone'], self.config.train.layer_decay, self.config.model.num_layers,
        head=('final_norm', 'lm_head'))
    if mup.enabled(self.config.model):
      backbone = jax.tree_util.tree_map(lambda a, b: (a * b).astype(np.float32), backbone,
                                        mup.lr_scales(params['backbone'], self.config.model))
    scales['backbone'] = backbone
    return scales

  def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
    return {'tokens': ('act_batch', None), 'label': ('act_batch',)}

  # --- data ------------------------------------------------------------------------------------
  def train_data(self, *, seed: int, process_index: int, process_count: int, batch_size: int):
    return build_labelled_train_dataset(self.config.data, seed=seed, process_index=process_index,
                                        process_count=process_count, batch_size=batch_size)

  def eval_data(self, *, process_index: int, process_count: int, batch_size: int,
                num_batches: int) -> Iterable[Mapping[str, Any]]:
    return build_labelled_eval_dataset(self.config.data, process_index=process_index,
                                       process_count=process_count, batch_size=batch_size,
                                       num_batches=num_batches)
