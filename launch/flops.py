"""FLOP accounting and device peaks for MFU.

MFU = achieved model FLOP/s / peak FLOP/s. Model FLOPs for a decoder count 6 per matmul parameter
per token (forward + backward) plus attention scores and mixing, 12 * layers * length * dim per
token, halved for causal attention (DESIGN section 3). Peaks are the dense bf16 datasheet numbers for
accelerators; on CPU the peak is measured with a large matmul in the compute dtype.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per device by substrings of ``device.device_kind``.
ACCELERATOR_PEAKS = (
    ('H200', 989e12), ('H100', 989e12), ('A100', 312e12), ('L4', 121e12), ('A10', 125e12),
    ('TPU v6', 918e12), ('TPU v5p', 459e12), ('TPU v5 lite', 197e12), ('TPU v5e', 197e12),
    ('TPU v5', 459e12), ('TPU v4', 275e12), ('TPU v3', 123e12),
)


def decoder_train_flops_per_token(matmul_params: int, num_layers: int, length: int, dim: int,
                                  causal: bool = True) -> float:
  """Training FLOPs per token: 6 N for the weights plus 12 L T D attention (x 1/2 if causal)."""
  attention = 12.0 * num_layers * length * dim * (0.5 if causal else 1.0)
  return 6.0 * matmul_params + attention


_MATMUL = jax.jit(jnp.matmul)


def matmul_flops_per_s(dtype: str = 'float32', n: int = 2048, repeats: int = 10) -> float:
  """Best FLOP/s of ``repeats`` ``n x n`` matmuls on the default device, measured now."""
  dt = jnp.dtype(dtype)
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dt)
  b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dt)
  _MATMUL(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    _MATMUL(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2.0 * n ** 3 / float(np.min(times))


@functools.lru_cache(maxsize=None)
def measured_matmul_peak(dtype: str = 'float32', n: int = 2048, repeats: int = 10) -> float:
  """The CPU's practical peak: :func:`matmul_flops_per_s`, once per process. The best, not the
  median, because a peak is what the machine can do when nothing else runs; on a shared machine
  the median drifts with the neighbours' load."""
  return matmul_flops_per_s(dtype, n, repeats)


def device_peak_flops(device=None, dtype: str = 'float32') -> tuple[float, str]:
  """(peak FLOP/s per device, where the number comes from)."""
  device = device or jax.devices()[0]
  if device.platform == 'cpu':
    return measured_matmul_peak(dtype), f'measured {dtype} 2048x2048 matmul on CPU (best of 10)'
  kind = device.device_kind
  for key, peak in ACCELERATOR_PEAKS:
    if key.lower() in kind.lower():
      return peak, f'datasheet dense bf16 peak of {kind}'
  return measured_matmul_peak('bfloat16', 8192), f'measured bf16 matmul on {kind}'
