"""Maximal update parameterisation (muP; Yang et al., "Tensor Programs V", 2022) for Toto.

Seed 000 section "Compute Optimal Scaling" tunes the learning rate of the a1..a6 family under muP
(one optimum, 2^-7, at every width). Switched on by ``model.mup = True`` with the width the
hyper-parameters were tuned at in ``model.mup_base_width``; ``width_mult = dim / mup_base_width``.
Following the ``mup`` package's rules for Adam (``MuReadout``, ``MuAdam``):

* hidden matrices (both dimensions grow with width: attention q/k/v/out, MLP gate/up/down):
  initial std ``0.02 / sqrt(width_mult)`` (variance proportional to 1/fan_in, equal to the standard
  0.02 at the base width) and learning rate ``lr / width_mult``;
* output head: logits multiplied by ``1 / width_mult``, constant init, learning rate unchanged;
* attention logits ``q.k * sqrt(base_head_dim) / head_dim`` (1/d instead of 1/sqrt(d), scaled so the
  base width is the usual ``1/sqrt(head_dim)``);
* input embedding, norm gains and biases (vector-like): unchanged.

At the base width every rule is the identity, so muP and the standard parameterisation give the
same function of the same parameters. :func:`coord_check` measures activation scales after a few
Adam steps across widths (the muP "coordinate check").
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

BASE_INIT_STD = 0.02  # the standard parameterisation's init (toto_jax.model._dense_init)


def enabled(model_cfg) -> bool:
  """Whether ``model.mup`` is on (configs without the field are standard-parameterised)."""
  return bool(getattr(model_cfg, 'mup', False))


def base_width(model_cfg) -> int:
  """``model.mup_base_width``; raises naming the field when it is missing or not positive."""
  width = getattr(model_cfg, 'mup_base_width', None)
  if not width or int(width) <= 0:
    raise ValueError(f'model.mup_base_width must be a positive width when model.mup is on, '
                     f'got {width!r}')
  if model_cfg.num_heads and int(width) % model_cfg.num_heads:
    raise ValueError(f'model.mup_base_width ({width}) must be divisible by model.num_heads '
                     f'({model_cfg.num_heads}): the base head dim sets the attention scale')
  return int(width)


def width_mult(model_cfg) -> float:
  """``dim / mup_base_width`` under muP, 1 otherwise."""
  if not enabled(model_cfg):
    return 1.0
  return model_cfg.dim / base_width(model_cfg)


def hidden_init_std(model_cfg) -> float:
  """Initial std of the hidden matrices: ``0.02 / sqrt(width_mult)`` (0.02 without muP)."""
  return BASE_INIT_STD / math.sqrt(width_mult(model_cfg))


def readout_multiplier(model_cfg) -> float:
  """Multiplier on the output logits: ``1 / width_mult`` (MuReadout's ``1/width``)."""
  return 1.0 / width_mult(model_cfg)


def query_multiplier(model_cfg) -> float:
  """Factor on the queries that turns the default ``1/sqrt(head_dim)`` attention scale into
  muP's ``sqrt(base_head_dim) / head_dim``: ``sqrt(base_head_dim / head_dim)``."""
  if not enabled(model_cfg):
    return 1.0
  head_dim = model_cfg.dim // model_cfg.num_heads
  return math.sqrt((base_width(model_cfg) // model_cfg.num_heads) / head_dim)


def _name(entry) -> str:
  return str(getattr(entry, 'key', getattr(entry, 'name', entry)))


def is_hidden_matrix(path: Sequence[Any]) -> bool:
  """A kernel inside the transformer body (``layers/...``): both of its dimensions scale with
  width. The embedding table and the head have one fixed (vocabulary) dimension; norm gains and
  biases are vectors."""
  names = [_name(p) for p in path]
  return names[0] == 'layers' and names[-1] == 'kernel'


def lr_scales(params: Any, model_cfg) -> Any:
  """Per-parameter learning-rate multipliers for Adam under muP (``launch.optim``'s
  ``lr_scales`` contract): ``1 / width_mult`` for hidden matrices, 1 for everything else."""
  hidden = np.float32(1.0 / width_mult(model_cfg))
  return jax.tree_util.tree_map_with_path(
      lambda path, _: hidden if is_hidden_matrix(path) else np.float32(1.0), params)


def enable(config, base: int) -> Any:
  """A copy of the run ``config`` with muP on at base width ``base`` (adds the ``model.mup*``
  fields to configs that do not declare them)."""
  config = copy.deepcopy(config)
  with config.unlocked() if hasattr(config, 'unlocked') else contextlib.nullcontext():
    config.model.mup = True
    config.model.mup_base_width = int(base)
  return config


def with_width(model_cfg, dim: int) -> Any:
  """A copy of ``model_cfg`` at width ``dim``: the MLP keeps its ratio to ``dim`` and the number of
  heads stays fixed (head_dim grows), as in the muP family of Table 4.15."""
  cfg = copy.deepcopy(model_cfg)
  ratio = model_cfg.mlp_dim / model_cfg.dim
  with cfg.unlocked() if hasattr(cfg, 'unlocked') else contextlib.nullcontext():
    cfg.dim = int(dim)
    cfg.mlp_dim = int(round(ratio * dim))
  if dim % cfg.num_heads or (dim // cfg.num_heads) % 2:
    raise ValueError(f'width {dim} must give an even head dim with model.num_heads = '
                     f'{cfg.num_heads}')
  return cfg


def coord_check(model_cfg, widths: Sequence[int], *, steps: int = 4, lr: float = 1e-2,
                batch: int = 4, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
  """The muP coordinate check: trains ``model_cfg`` at each width for ``steps`` Adam steps (with
  :func:`lr_scales` when muP is on) on one fixed batch of random tokens and records, after every
  step, the mean absolute value of the output logits and of the last layer's hidden state.

  Returns ``{'widths': [W], 'logits': [W, steps + 1], 'hidden': [W, steps + 1]}`` (column 0 is
  at initialisation). Under muP the hidden rows stay roughly equal across widths and the logits
  do not grow (at init they shrink like ``1/sqrt(width_mult)``: constant readout init times
  ``1/width_mult``); under the standard parameterisation both grow with width.
  """
  import optax

  from launch.optim import scale_updates
  from toto_jax.model import Toto
  from toto_jax.task import next_token_loss

  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(1, model_cfg.vocab_size, (batch, length + 1)), jnp.int32)
  out = {'widths': np.asarray(widths), 'logits': [], 'hidden': []}
  for width in widths:
    cfg = with_width(model_cfg, width)
    model = Toto(cfg)
    params = nn_unbox(model.init(jax.random.key(seed), tokens[:, :-1])['params'])
    parts = [optax.adam(lr)]
    if enabled(cfg):
      parts.append(scale_updates(lr_scales(params, cfg)))
    tx = optax.chain(*parts)

    def loss_fn(p, cfg=cfg, model=model):
      logits, hidden = model.apply({'params': p}, tokens[:, :-1], return_hidden=True)
      nll, weight, _ = next_token_loss(logits, tokens[:, 1:], cfg.vocab_size)
      return nll / weight, (jnp.mean(jnp.abs(logits)), jnp.mean(jnp.abs(hidden[-1])))

    @jax.jit
    def step(p, s, tx=tx, loss_fn=loss_fn):  # scales of the current params, then one update
      (_, scales), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
      updates, s = tx.update(grads, s, p)
      return optax.apply_updates(p, updates), s, scales

    state = tx.init(params)
    logit_scale, hidden_scale = [], []
    for _ in range(steps + 1):  # the last update is not measured
      params, state, (lg, hd) = step(params, state)
      logit_scale.append(float(lg))
      hidden_scale.append(float(hd))
    out['logits'].append(logit_scale)
    out['hidden'].append(hidden_scale)
  out['logits'] = np.asarray(out['logits'])
  out['hidden'] = np.asarray(out['hidden'])
  return out


def nn_unbox(tree: Any) -> Any:
  """Parameters without their ``nn.Partitioned`` logical-axis boxes."""
  import flax.linen as nn
  return nn.meta.unbox(tree)


def plot_coord_check(checks: dict[str, dict], path: str) -> None:
  """The coordinate check as a picture: mean |activation| against width, one line per step, one
  panel per (parameterisation, activation); ``checks`` maps a title to :func:`coord_check`'s
  output."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from tokenizers_jax.pictures import save_figure

  fig, axes = plt.subplots(2, len(checks), figsize=(4.2 * len(checks), 7), squeeze=False)
  for col, (title, check) in enumerate(checks.items()):
    for row, key in enumerate(('hidden', 'logits')):
      ax = axes[row, col]
      values = np.asarray(check[key])
      for step in range(values.shape[1]):
        ax.plot(check['widths'], values[:, step], 'o-', color=f'C{step}', label=f'step {step}')
      ax.set_xscale('log', base=2)
      ax.set_yscale('log')
      ax.set_xlabel('width (model.dim)')
      ax.set_ylabel(f'mean |{key}|')
      ax.set_title(f'{title}: {"last hidden state" if key == "hidden" else "output logits"}',
                   fontsize=9)
      ax.grid(True, which='both', alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  save_figure(fig, path, dpi=120)
