"""Scaling laws: training compute in MACs and power-law fits of loss against compute.

Seed 000 (Fig. 4.9) reports ``L(C) = 7.32 * C^-0.0378`` for the a1..a6 family, with ``C`` the
training compute in multiply-accumulates. A MAC is two FLOPs, and a training step costs three
forward passes (forward + backward = 1 + 2), so the MACs here are exactly half the FLOPs of
:func:`launch.flops.decoder_train_flops_per_token`: ``3 N`` per token for the ``N`` matmul
parameters plus ``6 L T D`` attention (halved when causal).

:func:`fit_power_law` fits ``a * C^-b`` by least squares in log-log space;
:func:`fit_power_law_offset` adds an irreducible loss ``e`` (``L = e + a * C^-b``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

# Seed 000, section "Compute Optimal Scaling": Toto a1..a6, validation loss vs training MACs.
THESIS_LAW = (7.32, 0.0378)
GPT3_LAW = (2.57, 0.048)


# ---------------------------------------------------------------------------------------------
# Compute
# ---------------------------------------------------------------------------------------------

def train_macs_per_token(model_cfg, length: int) -> float:
  """Training MACs per token (forward + backward = 3 x forward) of a Toto decoder at sequence
  length ``length``: half of :func:`launch.flops.decoder_train_flops_per_token`."""
  from launch.flops import decoder_train_flops_per_token
  from toto_jax.task import param_counts
  flops = decoder_train_flops_per_token(param_counts(model_cfg)['matmul'], model_cfg.num_layers,
                                        length, model_cfg.dim, causal=model_cfg.causal)
  return flops / 2.0


def training_macs(model_cfg, tokens: float, length: int | None = None) -> float:
  """MACs to train on ``tokens`` tokens in sequences of ``length`` (default ``model.max_len``)."""
  length = int(length or model_cfg.max_len)
  if length < 1:
    raise ValueError(f'sequence length must be positive, got {length}')
  return float(tokens) * train_macs_per_token(model_cfg, length)


def run_tokens(config, steps: int) -> tuple[int, int]:
  """(tokens seen after ``steps`` optimizer steps, tokens per sequence) of a Toto run config."""
  from toto_jax import data as token_data
  length = token_data.sequence_length(config.data) - 1
  return int(steps) * int(config.train.global_batch_size) * length, length


def run_compute(config, steps: int | None = None) -> float:
  """Training MACs ``C`` of a Toto run config after ``steps`` (default ``train.total_steps``)."""
  tokens, length = run_tokens(config, config.train.total_steps if steps is None else steps)
  return training_macs(config.model, tokens, length)


# ---------------------------------------------------------------------------------------------
# Fits
# ---------------------------------------------------------------------------------------------

def _check_points(compute: Sequence[float], loss: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  c = np.asarray(compute, np.float64).reshape(-1)
  l = np.asarray(loss, np.float64).reshape(-1)
  if c.shape != l.shape:
    raise ValueError(f'compute and loss differ in length: {c.size} vs {l.size}')
  keep = np.isfinite(c) & np.isfinite(l)
  c, l = c[keep], l[keep]
  if c.size < 2 or np.unique(c).size < 2:
    raise ValueError(f'a power-law fit needs at least 2 finite points at distinct compute, '
                     f'got {c.size}')
  if (c <= 0).any() or (l <= 0).any():
    raise ValueError('compute and loss must be positive for a log-log fit')
  return c, l


def fit_power_law(compute: Sequence[float], loss: Sequence[float]) -> tuple[float, float]:
  """``(a, b)`` of ``L = a * C^-b`` by least squares on ``log L = log a - b log C`` (non-finite
  points are dropped)."""
  c, l = _check_points(compute, loss)
  slope, intercept = np.polyfit(np.log(c), np.log(l), 1)
  return float(math.exp(intercept)), float(-slope)


def fit_power_law_offset(compute: Sequence[float], loss: Sequence[float]
                         ) -> tuple[float, float, float]:
  """``(a, b, e)`` of ``L = e + a * C^-b`` with an irreducible loss ``0 <= e < min L``: for each
  ``e`` the log-log fit of ``L - e`` is linear, and ``e`` minimises the squared error of
  ``log L`` (bounded scalar search)."""
  from scipy import optimize
  c, l = _check_points(compute, loss)
  if c.size < 3:
    raise ValueError(f'a fit with an irreducible loss needs at least 3 points, got {c.size}')
  log_c, log_l = np.log(c), np.log(l)

  def fit_at(e: float) -> tuple[float, float, float]:
    slope, intercept = np.polyfit(log_c, np.log(l - e), 1)
    pred = np.log(e + np.exp(intercept + slope * log_c))
    return float(np.sum((pred - log_l) ** 2)), float(math.exp(intercept)), float(-slope)

  upper = float(l.min()) * (1.0 - 1e-6)
  res = optimize.minimize_scalar(lambda e: fit_at(e)[0], bounds=(0.0, upper), method='bounded',
                                 options={'xatol': 1e-10 * max(upper, 1.0)})
  e = float(res.x)
  if fit_at(0.0)[0] <= fit_at(e)[0]:
    e = 0.0
  _, a, b = fit_at(e)
  return a, b, e


def power_law(compute: Any, a: float, b: float, e: float = 0.0) -> np.ndarray:
  """``e + a * C^-b``."""
  return e + a * np.asarray(compute, np.float64) ** (-b)


def frontier(compute: Sequence[float], loss: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """The compute-efficient frontier: sorted by compute, the points whose loss is below every
  point at smaller or equal compute (the lower envelope of several loss-vs-compute curves)."""
  c = np.asarray(compute, np.float64).reshape(-1)
  l = np.asarray(loss, np.float64).reshape(-1)
  keep = np.isfinite(c) & np.isfinite(l)
  c, l = c[keep], l[keep]
  order = np.lexsort((l, c))
  out_c, out_l, best = [], [], math.inf
  for i in order:
    if l[i] < best:
      best = float(l[i])
      out_c.append(float(c[i]))
      out_l.append(best)
  return np.asarray(out_c), np.asarray(out_l)


# ---------------------------------------------------------------------------------------------
# Files and pictures
# ---------------------------------------------------------------------------------------------

def plot_power_law(points: Sequence[dict], fit: dict, path: str, *, title: str = '',
                   curves: Sequence[dict] = ()) -> None:
  """Log-log plot of loss vs training MACs: the fitted points (``{'macs', 'loss', 'label'}``),
  optional training curves (``{'macs': [...], 'loss': [...], 'label'}``), the fit
  (``{'a', 'b', 'e'}``) and, for reference, the thesis's ``7.32 C^-0.0378``."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7.5, 5.0))
  for curve in curves:
    ax.plot(curve['macs'], curve['loss'], '-', alpha=0.35, lw=1, label=curve.get('label'))
  c = np.asarray([p['macs'] for p in points], np.float64)
  l = np.asarray([p['loss'] for p in points], np.float64)
  ax.scatter(c, l, color='k', zorder=3, label='fitted points')
  for p in points:
    if p.get('label'):
      ax.annotate(p['label'], (p['macs'], p['loss']), textcoords='offset points', xytext=(4, 4),
                  fontsize=8)
  grid = np.geomspace(c.min() / 2, c.max() * 2, 100)
  e = fit.get('e', 0.0)
  law = f"{fit['a']:.3g} C^-{fit['b']:.4g}" + (f' + {e:.3g}' if e else '')
  ax.plot(grid, power_law(grid, fit['a'], fit['b'], e), 'C3-', lw=2, label=f'our fit: {law}')
  a, b = THESIS_LAW
  ax.plot(grid, power_law(grid, a, b), 'C0--', lw=1.5,
          label=f'thesis: {a} C^-{b} (VQGAN tokens, real video; other units of loss)')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('training compute C (MACs)')
  ax.set_ylabel('loss (nats / token)')
  ax.set_title(title or 'Loss vs training compute')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=7, loc='best')
  fig.tight_layout()
  from tokenizers_jax.pictures import save_figure
  save_figure(fig, path, dpi=120)
