r"""Training-step benchmark: prints one JSON line with step time, tokens/s, FLOPs and MFU.

  python -m launch.bench toto --config configs/toto.py:base --seq_len 1024 --batch 1
  python -m launch.bench toto --config configs/toto.py:tiny
  python -m launch.bench torch_llama --config configs/toto.py:base --seq_len 1024   # needs torch

It times the trainer's own jitted step (forward, backward, clipping, AdamW, donation) on random
tokens already on the devices, so the figure is the model and optimizer, not the input pipeline.
Peak FLOP/s: on CPU a large matmul is measured in the same process (the practical peak); on GPUs
and TPUs the datasheet dense bf16 figure. Report medians; the machine is shared and noisy.
``torch_llama`` times the PyTorch ``transformers`` LlamaForCausalLM with AdamW at the same
dimensions (torch and transformers are not dependencies of the project; install them to compare).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from launch import flops as flops_lib
from launch import optim
from launch import sharding as shard_lib
from launch import tasks as tasks_lib
from launch import train as train_lib


def bench_toto(config, seq_len: int | None, batch: int, steps: int, warmup: int) -> dict:
  from launch.flops import decoder_train_flops_per_token
  from toto_jax.task import param_counts

  task = tasks_lib.get_task(config)
  m = config.model
  length = seq_len or (m.max_len)
  devices = jax.devices()
  mesh = shard_lib.make_mesh(config.mesh, devices)
  rules = shard_lib.rules_of(config)
  config.train.total_steps = max(config.train.total_steps, steps + warmup + 1)
  config.train.warmup_steps = min(config.train.warmup_steps, 1)
  tx = optim.make_optimizer(config.train)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    rng = jax.random.key(0)
    _, shardings = train_lib.state_shardings(task, tx, mesh, rules, rng)
    state = jax.jit(train_lib.make_state_fns(task, tx), out_shardings=shardings)(rng)
    placer = train_lib.BatchPlacer(mesh, rules, task.batch_axes(), 1, batch)
    tokens = np.random.default_rng(0).integers(4, m.vocab_size, (batch, length + 1), np.int32)
    batch_arrays = placer({'tokens': tokens})
    step_fn = jax.jit(train_lib.make_train_step(task, tx, shardings['params']),
                      in_shardings=(shardings, {'tokens': placer.sharding('tokens')},
                                    shard_lib.replicated(mesh)),
                      out_shardings=(shardings, shard_lib.replicated(mesh)),
                      donate_argnums=(0,))
    times = []
    for i in range(warmup + steps):
      t = time.perf_counter()
      state, metrics = step_fn(state, batch_arrays, rng)
      jax.block_until_ready((state, metrics))
      if i >= warmup:
        times.append(time.perf_counter() - t)
    loss = float(metrics['train/loss'])

  counts = param_counts(m)
  flops_per_token = decoder_train_flops_per_token(counts['matmul'], m.num_layers, length, m.dim,
                                                  causal=m.causal)
  step_time = statistics.median(times)
  tokens = batch * length
  achieved = flops_per_token * tokens / step_time
  peak, source = flops_lib.device_peak_flops(devices[0], m.dtype)
  total_peak = peak if devices[0].platform == 'cpu' else peak * len(devices)
  return {
      'bench': 'toto_train_step', 'variant': config.get('variant', ''), 'arch': m.arch,
      'dtype': m.dtype, 'seq_len': length, 'batch': batch, 'params': counts['total'],
      'devices': len(devices), 'device_kind': devices[0].device_kind,
      'machine': platform.processor() or platform.machine(),
      'step_time_s_median': step_time, 'step_time_s_all': times,
      'tokens_per_s': tokens / step_time, 'model_flops_per_token': flops_per_token,
      'achieved_flops_per_s': achieved, 'peak_flops_per_s': total_peak, 'peak_source': source,
      'mfu': achieved / total_peak, 'loss': loss,
  }


def bench_torch_reference(config, seq_len: int | None, batch: int, steps: int,
                          warmup: int) -> dict:
  """The same step in PyTorch: ``transformers.LlamaForCausalLM`` + ``torch.optim.AdamW`` at the
  config's dimensions, against a torch matmul peak measured the same way (needs torch)."""
  import torch
  import transformers

  from launch.flops import decoder_train_flops_per_token
  from toto_jax.hf import config_to_hf
  from toto_jax.task import param_counts

  m = config.model
  length = seq_len or m.max_len
  hf_cfg = transformers.LlamaConfig(**{**config_to_hf(m), 'max_position_embeddings': length + 1})
  model = transformers.LlamaForCausalLM(hf_cfg).float().train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
  tokens = torch.as_tensor(
      np.random.default_rng(0).integers(4, m.vocab_size, (batch, length + 1)), dtype=torch.long)
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    out = model(tokens[:, :-1], labels=tokens[:, :-1])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= warmup:
      times.append(time.perf_counter() - t)

  n = 2048
  a, b = torch.randn(n, n), torch.randn(n, n)
  a @ b
  mm = []
  for _ in range(10):  # best of 10, as launch.flops.measured_matmul_peak does for JAX
    t = time.perf_counter()
    a @ b
    mm.append(time.perf_counter() - t)
  peak = 2.0 * n ** 3 / min(mm)
  flops_per_token = decoder_train_flops_per_token(param_counts(m)['matmul'], m.num_layers, length,
                                                  m.dim, causal=True)
  step_time = statistics.median(times)
  return {
      'bench': 'torch_llama_reference', 'torch': torch.__version__,
      'transformers': transformers.__version__, 'threads': torch.get_num_threads(),
      'seq_len': length, 'batch': batch, 'step_time_s_median': step_time,
      'step_time_s_all': times, 'tokens_per_s': batch * length / step_time,
      'model_flops_per_token': flops_per_token,
      'achieved_flops_per_s': flops_per_token * batch * length / step_time,
      'peak_flops_per_s': peak, 'peak_source': f'measured float32 {n}x{n} torch matmul (best of 10)',
      'mfu': flops_per_token * batch * length / step_time / peak,
  }


BENCHES = {'toto': bench_toto, 'torch_llama': bench_torch_reference}


def main(argv) -> None:
  from absl import flags
  fl = flags.FLAGS
  if len(argv) < 2 or argv[1] not in BENCHES:
    raise SystemExit('usage: python -m launch.bench {toto|torch_llama} --config '
                     'configs/toto.py:VARIANT [--seq_len N] [--batch B] [--steps S]')
  result = BENCHES[argv[1]](fl.config, fl.seq_len, fl.batch, fl.steps, fl.warmup)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/toto.py:VARIANT', lock_config=False)
  flags.DEFINE_integer('seq_len', None, 'Model input length (default: model.max_len).')
  flags.DEFINE_integer('batch', 1, 'Sequences per step.')
  flags.DEFINE_integer('steps', 5, 'Timed steps (median reported).')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps first (compilation).')
  flags.mark_flags_as_required(['config'])
  app.run(main)
