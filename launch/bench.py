r"""Training-step benchmark: prints one JSON line with step time, tokens/s, FLOPs and MFU.

  python -m launch.bench toto --config configs/toto.py:base --seq_len 1024 --batch 1
  python -m launch.bench toto --config configs/toto.py:tiny
  python -m launch.bench torch_llama --config configs/toto.py:base --seq_len 1024   # needs torch
  python -m launch.bench toto_breakdown --config configs/toto.py:base --seq_len 1024 --steps 3
  python -m launch.bench profile --config configs/toto.py:base --seq_len 1024 [--trace_dir DIR]
  python -m launch.bench compare --config configs/toto.py:base --seq_len 1024 --rounds 6 \
      --variant as_is --variant remat:model.remat_policy=full
  python -m launch.bench tokenizer [--which dvae|vq|job|all] [--resolution 128] [--batch 16]

It times the trainer's own jitted step (forward, backward, clipping, AdamW, donation) on random
tokens already on the devices, so the figure is the model and optimizer, not the input pipeline.
Peak FLOP/s: on CPU a large matmul is measured in the same process (the practical peak); on GPUs
and TPUs the datasheet dense bf16 figure. On CPU the matmul rate is also measured just before every
timed step (``mfu_beside_steps``), and ``mfu_vs_best_peak`` divides by the best rate seen. Report
medians; the machine is shared and noisy.
``torch_llama`` times the PyTorch ``transformers`` LlamaForCausalLM with AdamW at the same
dimensions (torch and transformers are not dependencies of the project; install them to compare).
``compare`` compiles several variants of one config (``--variant NAME:FIELD=VALUE;...``) in one
process and times their train steps in turn, round after round: on a shared machine this is the
comparison to trust (the median per-round ratio to the first variant is reported).
``profile`` traces one train step and groups the time XLA's ops recorded by pass (forward,
backward, other) and model part (projection matmuls, attention, norms, layer scan, optimizer...),
with the slowest ops and their shapes (:mod:`launch.op_profile`; ``--trace_dir`` keeps the trace).
``toto_breakdown`` splits the step's time: forward, forward + backward, optimizer, the attention
(forward + backward with and without it) and the projection matmuls alone at the model's shapes.
``tokenizer`` times frame tokenization with random weights (one JSON line per item): the DALL-E
dVAE encoder at its released sizes (``dvae``), the VQ tokenizer of ``configs/tokenizer.py:vq``
(``vq``), and the whole ``launch.tokenize`` job (OpenCV decoding, encoding, shard writing) over
synthetic 64-frame 160x128 videos (``job``).

  python -m launch.bench lart --config configs/lart.py:pose_appearance [--batch 1] [--seq_len T]

``lart`` times the LART train step (masking, dropout, BCE, AdamW) on random windows of
``data.max_frames`` x ``data.num_people`` tokens (``--seq_len`` overrides the frames); the
synthetic accuracy benchmark is ``python -m lart_jax.benchmark``.

  python -m launch.bench phalp [--batches 1,16,64] [--capacity 32] [--detections 20] \
      [--frames 200] [--repeats 3] [--reference] [--lmc]

``phalp`` times the PHALP tracker (``phalp_jax.tracker.track_batch``: predict, cost, the B host
Hungarians, update) on B synthetic videos of about ``--detections`` usable detections per frame,
one JSON line per B; compilation is excluded (one untimed call first). ``--reference`` also times
the per-track NumPy implementation ``phalp_jax.reference`` on the same videos (B <= 16: it is
slow), checks that its rows equal the tracker's and reports the speed ratio. LMC is off unless
``--lmc`` (the reference has none; the ratio is only reported without it).

  python -m launch.bench decode --config configs/toto.py:tiny [--prompt_len P] [--new_tokens N]
  python -m launch.bench decode --config configs/toto.py:base --seq_len 256 --prompt_len 224 \
      --new_tokens 32 --repeats 3

``decode`` times :func:`toto_jax.sampling.sample` (random weights, temperature 1, top-p 0.95) with
the key/value cache against recomputing the full context for every new token: same model, same
prompt, same keys; ``--seq_len`` sets the context (``model.max_len``); default prompt is half of
it and the new tokens fill the rest. Compilation is excluded (one untimed call per mode); the
median of ``--repeats`` calls is reported, with the fraction of tokens on which the modes agree.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from launch import flops as flops_lib
from launch import sharding as shard_lib
from launch import tasks as tasks_lib
from launch import train as train_lib


def random_tokens(model_config, batch: int, length: int) -> np.ndarray:
  """``batch`` sequences of ``length + 1`` ids (inputs and shifted targets) from the real
  vocabulary, past the reserved ids; the same for every bench so their figures compare."""
  return np.random.default_rng(0).integers(4, model_config.vocab_size, (batch, length + 1),
                                           np.int32)


@contextlib.contextmanager
def compiled_train_step(task, config, mesh, local_batch: dict):
  """The trainer's own jitted step (state created sharded, batch placed as the trainer places
  it, state donated), inside the mesh and logical-axis-rules context it runs in. Yields
  ``(step_fn, state, batch_arrays, rng)``."""
  rules = shard_lib.rules_of(config)
  batch = len(next(iter(local_batch.values())))
  tx = train_lib.make_tx(task, config.train)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    rng = jax.random.key(0)
    _, shardings = train_lib.state_shardings(task, tx, mesh, rules, rng)
    state = jax.jit(train_lib.make_state_fns(task, tx), out_shardings=shardings)(rng)
    placer = train_lib.BatchPlacer(mesh, rules, task.batch_axes(), 1, batch)
    batch_arrays = placer(local_batch)
    step_fn = train_lib.jit_train_step(task, tx, shardings,
                                       {k: placer.sharding(k) for k in batch_arrays},
                                       shard_lib.replicated(mesh))
    yield step_fn, state, batch_arrays, rng


def time_train_step(task, config, mesh, local_batch: dict, steps: int, warmup: int,
                    before_each: Callable[[], None] | None = None) -> tuple[list[float], float]:
  """Seconds of each timed call of the trainer's own jitted step (:func:`compiled_train_step`)
  and the last loss. ``before_each`` runs, untimed, before every timed call."""
  with compiled_train_step(task, config, mesh, local_batch) as (step_fn, state, batch_arrays, rng):
    times = []
    for i in range(warmup + steps):
      if i >= warmup and before_each is not None:
        before_each()
      t = time.perf_counter()
      state, metrics = step_fn(state, batch_arrays, rng)
      jax.block_until_ready((state, metrics))
      if i >= warmup:
        times.append(time.perf_counter() - t)
    return times, float(metrics['train/loss'])


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
  """``NAME:FIELD=VALUE;FIELD=VALUE`` (or ``NAME`` alone: the config as given) -> name and
  overrides of dotted config fields."""
  name, _, assignments = spec.partition(':')
  if not name.strip():
    raise ValueError(f'--variant {spec!r}: give it a name, NAME:FIELD=VALUE;...')
  overrides = {}
  for item in filter(None, (a.strip() for a in assignments.split(';'))):
    field, eq, value = item.partition('=')
    if not eq or not field.strip():
      raise ValueError(f'--variant {spec!r}: {item!r} is not FIELD=VALUE')
    overrides[field.strip()] = value.strip()
  return name.strip(), overrides


def compare_toto(config, variants: list[str], seq_len: int | None, batch: int, rounds: int,
                 warmup: int) -> dict:
  """Train steps of several variants of one config, compiled side by side in one process and
  timed in turn for ``rounds`` rounds. On a shared machine whose speed drifts by tens of percent
  over minutes, this is the comparison to trust: every round times each variant within seconds
  of the others, and ``ratio_to_first_median`` is the median over rounds of each variant's step
  time over the first variant's in the same round."""
  from configs import common

  parsed = [parse_variant(v) for v in variants]
  names = [n for n, _ in parsed]
  if len(parsed) < 2 or len(set(names)) != len(names):
    raise ValueError(f'--variant: give two or more variants with distinct names, got {names}')
  length = seq_len or config.model.max_len
  tokens = random_tokens(config.model, batch, length)
  runs = []
  with contextlib.ExitStack() as stack:
    for name, overrides in parsed:
      cfg = copy.deepcopy(config)
      for field, value in overrides.items():
        common.set_field(cfg, field, value, source=f'--variant {name}:')
      cfg.train.warmup_steps = min(cfg.train.warmup_steps, 1)
      task = tasks_lib.get_task(cfg)
      mesh = shard_lib.make_mesh(cfg.mesh, jax.devices())
      step_fn, state, batch_arrays, rng = stack.enter_context(
          compiled_train_step(task, cfg, mesh, {'tokens': tokens}))
      state, metrics = step_fn(state, batch_arrays, rng)
      first_loss = float(metrics['train/loss'])
      for _ in range(warmup - 1):
        state, _ = step_fn(state, batch_arrays, rng)
      runs.append({'name': name, 'overrides': overrides, 'step': step_fn, 'state': state,
                   'batch': batch_arrays, 'rng': rng, 'mesh': mesh,
                   'rules': shard_lib.rules_of(cfg), 'first_loss': first_loss, 'times': []})
    for _ in range(rounds):
      for run in runs:
        with jax.set_mesh(run['mesh']), nn.logical_axis_rules(run['rules']):
          t = time.perf_counter()
          run['state'], metrics = run['step'](run['state'], run['batch'], run['rng'])
          jax.block_until_ready((run['state'], metrics))
          run['times'].append(time.perf_counter() - t)
  first = runs[0]['times']
  return {
      'bench': 'toto_compare', 'variant': config.get('variant', ''), 'seq_len': length,
      'batch': batch, 'rounds': rounds, 'device_kind': jax.devices()[0].device_kind,
      'machine': platform.processor() or platform.machine(),
      'variants': [{
          'name': r['name'], 'overrides': r['overrides'], 'first_loss': r['first_loss'],
          'step_time_s_median': statistics.median(r['times']), 'step_time_s_all': r['times'],
          'ratio_to_first_median': statistics.median(a / b for a, b in zip(r['times'], first)),
      } for r in runs]}


def format_comparison(result: dict) -> str:
  lines = [f"{'variant':24s} {'median s':>9s} {'x first':>8s}  overrides"]
  for v in result['variants']:
    lines.append(f"{v['name']:24s} {v['step_time_s_median']:9.3f} "
                 f"{v['ratio_to_first_median']:8.3f}  "
                 + '; '.join(f'{k}={x}' for k, x in v['overrides'].items()))
  return '\n'.join(lines)


def profile_toto(config, seq_len: int | None, batch: int, warmup: int, trace_dir: str | None = None,
                 top: int = 20) -> dict:
  """One traced Toto train step, its recorded op time grouped by pass and model part
  (:mod:`launch.op_profile`)."""
  from launch import op_profile

  config = copy.deepcopy(config)  # the caller's config is left as it was
  task = tasks_lib.get_task(config)
  m = config.model
  length = seq_len or m.max_len
  mesh = shard_lib.make_mesh(config.mesh, jax.devices())
  config.train.warmup_steps = min(config.train.warmup_steps, 1)
  tokens = random_tokens(m, batch, length)
  with compiled_train_step(task, config, mesh, {'tokens': tokens}) as (step_fn, state, batch_arrays,
                                                                       rng):
    compiled = step_fn.lower(state, batch_arrays, rng).compile()  # its HLO names the trace's ops
    for _ in range(max(warmup, 1)):
      state, _ = compiled(state, batch_arrays, rng)
    jax.block_until_ready(state)

    def run_once():
      jax.block_until_ready(compiled(state, batch_arrays, rng))

    result = op_profile.profile_compiled(run_once, compiled.as_text(), trace_dir, top)
  return {'bench': 'toto_profile', 'variant': config.get('variant', ''), 'seq_len': length,
          'batch': batch, 'device_kind': jax.devices()[0].device_kind,
          'trace_dir': trace_dir, **result}


def bench_toto(config, seq_len: int | None, batch: int, steps: int, warmup: int) -> dict:
  from launch.flops import decoder_train_flops_per_token
  from toto_jax.task import param_counts

  config = copy.deepcopy(config)  # the caller's config is left as it was
  task = tasks_lib.get_task(config)
  m = config.model
  length = seq_len or (m.max_len)
  devices = jax.devices()
  mesh = shard_lib.make_mesh(config.mesh, devices)
  config.train.total_steps = max(config.train.total_steps, steps + warmup + 1)
  config.train.warmup_steps = min(config.train.warmup_steps, 1)
  tokens = random_tokens(m, batch, length)
  on_cpu = devices[0].platform == 'cpu'
  # On a shared CPU the matmul rate drifts over minutes: measure it beside every timed step.
  peaks: list[float] = []
  times, loss = time_train_step(
      task, config, mesh, {'tokens': tokens}, steps, warmup,
      (lambda: peaks.append(flops_lib.matmul_flops_per_s(m.dtype, repeats=3))) if on_cpu else None)

  counts = param_counts(m)
  flops_per_token = decoder_train_flops_per_token(counts['matmul'], m.num_layers, length, m.dim,
                                                  causal=m.causal)
  step_time = statistics.median(times)
  tokens = batch * length
  achieved = flops_per_token * tokens / step_time
  peak, source = flops_lib.device_peak_flops(devices[0], m.dtype)
  total_peak = peak if on_cpu else peak * len(devices)
  extra = {}
  if on_cpu:
    best = max(peaks + [peak])
    extra = {
        'peak_flops_per_s_beside_steps': peaks,
        'mfu_beside_steps': statistics.median(flops_per_token * tokens / (t * p)
                                              for t, p in zip(times, peaks)),
        'mfu_vs_best_peak': achieved / best, 'best_peak_flops_per_s': best}
  return {
      'bench': 'toto_train_step', 'variant': config.get('variant', ''), 'arch': m.arch,
      'dtype': m.dtype, 'seq_len': length, 'batch': batch, 'params': counts['total'],
      'devices': len(devices), 'device_kind': devices[0].device_kind,
      'machine': platform.processor() or platform.machine(),
      'step_time_s_median': step_time, 'step_time_s_all': times,
      'tokens_per_s': tokens / step_time, 'model_flops_per_token': flops_per_token,
      'achieved_flops_per_s': achieved, 'peak_flops_per_s': total_peak, 'peak_source': source,
      'mfu': achieved / total_peak, 'loss': loss, **extra,
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


def bench_lart(config, seq_len: int | None, batch: int, steps: int, warmup: int) -> dict:
  """The trainer's LART step (masking, dropout, BCE, AdamW) on random tracklet windows of
  ``data.max_frames`` x ``data.num_people`` tokens; ``seq_len`` overrides the frames."""
  from lart_jax import data as lart_data
  from lart_jax.task import param_counts

  config = copy.deepcopy(config)  # the caller's config is left as it was
  d, m = config.data, config.model
  if seq_len:
    d.max_frames = seq_len
  config.train.epochs = 0  # the step budget below, not the data's epochs
  task = tasks_lib.get_task(config)
  task.validate()
  devices = jax.devices()
  mesh = shard_lib.make_mesh(config.mesh, devices)
  config.train.total_steps = max(config.train.total_steps, steps + warmup + 1)
  config.train.warmup_steps = min(config.train.warmup_steps, 1)
  rng_np = np.random.default_rng(0)
  local = {}
  for name, (shape, dtype) in lart_data.examples_spec(d).items():
    shape = (batch,) + shape
    if dtype == np.bool_:
      local[name] = rng_np.random(shape) < 0.9
    elif np.issubdtype(dtype, np.integer):
      local[name] = rng_np.integers(0, 3, shape).astype(dtype)
    else:
      local[name] = rng_np.random(shape).astype(dtype)
  times, loss = time_train_step(task, config, mesh, local, steps, warmup)
  step_time = statistics.median(times)
  tokens = batch * task.tokens_per_example()
  achieved = batch * task.train_flops_per_example() / step_time
  peak, source = flops_lib.device_peak_flops(devices[0], m.dtype)
  total_peak = peak if devices[0].platform == 'cpu' else peak * len(devices)
  return {
      'bench': 'lart_train_step', 'variant': config.get('variant', ''), 'dtype': m.dtype,
      'frames': int(d.max_frames), 'people': int(d.num_people),
      'appearance_dim': int(d.appearance_dim), 'tokens_per_example': task.tokens_per_example(),
      'batch': batch, 'params': param_counts(m)['total'], 'devices': len(devices),
      'device_kind': devices[0].device_kind, 'machine': platform.processor() or platform.machine(),
      'step_time_s_median': step_time, 'step_time_s_all': times,
      'tokens_per_s': tokens / step_time,
      'model_flops_per_token': task.train_flops_per_example() / task.tokens_per_example(),
      'achieved_flops_per_s': achieved, 'peak_flops_per_s': total_peak, 'peak_source': source,
      'mfu': achieved / total_peak, 'loss': loss,
  }


def _without_attention(q, k, v, **_):
  """Stand-in for the attention: each query head takes its key/value group's values."""
  return jnp.repeat(v, q.shape[2] // k.shape[2], axis=2)


def bench_toto_breakdown(config, seq_len: int | None, batch: int, steps: int, warmup: int
                         ) -> dict:
  """Where a Toto train step's time goes on one device (medians of ``steps`` calls): forward,
  forward + backward, the optimizer update, forward + backward with the attention replaced by a
  copy of the values, and the projection matmuls alone (forward + both gradients at the model's
  shapes, timed one shape at a time and summed). Differences give the attention and the rest
  (norms, activations, RoPE, loss, embedding gradient)."""
  from toto_jax import attention as attention_lib

  task = tasks_lib.get_task(config)
  m = config.model
  length = seq_len or m.max_len
  params = shard_lib.unbox(task.init(jax.random.key(0)))
  tokens = jnp.asarray(random_tokens(m, batch, length))
  rng = jax.random.key(0)

  def median_s(fn, *args) -> float:
    return statistics.median(_time_calls(lambda: fn(*args), steps, warmup))

  def loss(p):
    return task.loss(p, {'tokens': tokens}, rng)[0]

  grad_fn = jax.jit(jax.grad(loss))
  out = {'forward_s': median_s(jax.jit(loss), params),
         'forward_backward_s': median_s(grad_fn, params)}
  tx = train_lib.make_tx(task, config.train)
  grads, opt_state = grad_fn(params), tx.init(params)

  def update(g, o, p):
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o
  out['optimizer_s'] = median_s(jax.jit(update), grads, opt_state, params)
  real = attention_lib.dot_product_attention
  attention_lib.dot_product_attention = _without_attention
  try:
    no_attention = jax.jit(jax.grad(loss))
    out['forward_backward_without_attention_s'] = median_s(no_attention, params)
  finally:
    attention_lib.dot_product_attention = real

  d, h, layers = m.dim, m.num_heads, m.num_layers
  hd, kvh = d // h, m.num_kv_heads or h
  per_layer = ([(d, h * hd), (d, kvh * hd), (d, kvh * hd), (h * hd, d)] +
               ([(d, m.mlp_dim), (d, m.mlp_dim), (m.mlp_dim, d)] if m.arch == 'llama'
                else [(d, m.mlp_dim), (m.mlp_dim, d)]))
  shapes: dict[tuple[int, int], int] = {}
  for shape in per_layer:
    shapes[shape] = shapes.get(shape, 0) + layers
  vocab = params['lm_head']['kernel'].shape[-1]
  shapes[(d, vocab)] = shapes.get((d, vocab), 0) + 1
  n = batch * length
  matmul_s = 0.0
  for (a, b), count in shapes.items():
    x, w = jnp.ones((n, a), jnp.float32), jnp.full((a, b), 0.01, jnp.float32)
    fb = jax.jit(jax.grad(lambda x, w: (x @ w).sum(), argnums=(0, 1)))
    matmul_s += count * median_s(fb, x, w)
  out['projection_matmuls_s'] = matmul_s
  out['attention_s'] = out['forward_backward_s'] - out['forward_backward_without_attention_s']
  out['other_s'] = out['forward_backward_without_attention_s'] - matmul_s
  peak, source = flops_lib.device_peak_flops(jax.devices()[0], m.dtype)
  return {'bench': 'toto_breakdown', 'variant': config.get('variant', ''), 'arch': m.arch,
          'seq_len': length, 'batch': batch, **out, 'peak_flops_per_s': peak,
          'peak_source': source}


BENCHES = {'toto': bench_toto, 'torch_llama': bench_torch_reference, 'lart': bench_lart,
           'toto_breakdown': bench_toto_breakdown}


def bench_decode(config, seq_len: int | None = None, prompt_len: int | None = None,
                 new_tokens: int | None = None, batch: int = 1, repeats: int = 5) -> dict:
  """Decode tokens/s of ``toto_jax.sampling.sample`` with the cache and by full recompute."""
  from toto_jax import sampling
  from toto_jax.model import Toto

  m = copy.deepcopy(config.model)  # the caller's config is left as it was
  if seq_len:
    m.max_len = int(seq_len)
  prompt_len = int(prompt_len or m.max_len // 2)
  new_tokens = int(new_tokens or m.max_len - prompt_len)
  if prompt_len < 1 or new_tokens < 1 or prompt_len + new_tokens - 1 > m.max_len:
    raise ValueError(f'--prompt_len ({prompt_len}) + --new_tokens ({new_tokens}) - 1 must fit in '
                     f'the context model.max_len ({m.max_len}), both >= 1')
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      Toto(m).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))['params']))
  rng = np.random.default_rng(0)
  params = jax.device_put(jax.tree_util.tree_map(
      lambda s: (0.02 * rng.standard_normal(s.shape)).astype(np.float32), shapes))
  prompt = rng.integers(4, m.vocab_size, (batch, prompt_len), np.int32)
  record = {'bench': 'toto_decode', 'variant': config.get('variant', ''), 'arch': m.arch,
            'dtype': m.dtype, 'context': int(m.max_len), 'prompt_len': prompt_len,
            'new_tokens': new_tokens, 'batch': batch, 'repeats': repeats,
            'device': jax.devices()[0].platform, 'device_kind': jax.devices()[0].device_kind,
            'cpu_count': os.cpu_count(), 'jax': jax.__version__}
  outputs = {}
  for mode, use_cache in (('cache', True), ('recompute', False)):
    run = lambda: sampling.sample(m, params, prompt, new_tokens, rng=jax.random.key(0),
                                  temperature=1.0, top_p=0.95, use_cache=use_cache)
    t = time.perf_counter()
    outputs[mode] = run()  # compiles
    record[f'{mode}_first_call_s'] = time.perf_counter() - t
    times = []
    for _ in range(max(repeats, 1)):
      t = time.perf_counter()
      run()
      times.append(time.perf_counter() - t)
    record[f'{mode}_s_median'] = statistics.median(times)
    record[f'{mode}_s_all'] = times
    record[f'{mode}_tokens_per_s'] = batch * new_tokens / statistics.median(times)
  record['speedup'] = record['cache_tokens_per_s'] / record['recompute_tokens_per_s']
  record['tokens_agree'] = float(np.mean(outputs['cache'] == outputs['recompute']))
  return record


# ------------------------------------------------------------------------------------------------
# Tokenizers (random weights: the speed does not depend on the values)
# ------------------------------------------------------------------------------------------------

def _tokenizer_record(which: str, resolution: int, batch: int, times: list[float],
                      frames_per_call: int, note: str, **extra) -> dict:
  """Fields shared by the tokenizer benches; ``frames_per_call`` frames are encoded per call."""
  step = statistics.median(times)
  return {
      'bench': 'tokenizer', 'which': which, 'resolution': resolution, 'batch': batch, **extra,
      'median_step_s': step, 'step_time_s_all': times, 'frames_per_s': frames_per_call / step,
      'device': jax.devices()[0].platform, 'device_kind': jax.devices()[0].device_kind,
      'cpu_count': os.cpu_count(), 'jax': jax.__version__, 'note': note,
  }


def _time_calls(fn, repeats: int, warmup: int = 1) -> list[float]:
  """``fn()`` ``warmup`` times untimed (at least once: compilation), then ``repeats`` timed
  calls, each blocked on."""
  for _ in range(max(warmup, 1)):
    jax.block_until_ready(fn())
  times = []
  for _ in range(max(repeats, 1)):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def _random_frames(batch: int, resolution: int) -> jax.Array:
  frames = np.random.default_rng(0).integers(0, 256, (batch, resolution, resolution, 3), np.uint8)
  return jax.device_put(frames)


def bench_tokenizer_dvae(resolution: int = 128, batch: int = 16, repeats: int = 5,
                         n_hid: int = 256) -> dict:
  """DALL-E dVAE encoder (released sizes unless ``n_hid`` is smaller): uint8 frames -> codes."""
  from tokenizers_jax import dvae
  encoder = dvae.Encoder(n_hid=n_hid)
  params = jax.jit(encoder.init)(jax.random.key(0),
                                 jnp.zeros((1, resolution, resolution, 3)))['params']
  frames = _random_frames(batch, resolution)
  times = _time_calls(lambda: dvae.encode(params, frames, encoder), repeats)
  return _tokenizer_record('dvae', resolution, batch, times, batch, 'random weights',
                           n_hid=n_hid, codebook_size=encoder.vocab_size,
                           grid=resolution // encoder.downsample)


def _random_vq(variant: str, resolution: int):
  """(VQConfig, params, codebook state) of ``configs/tokenizer.py:variant`` with random weights."""
  from configs import tokenizer as tokenizer_config
  from tokenizers_jax import vq
  cfg = vq.VQConfig.from_config(tokenizer_config.get_config(variant).model)
  init_rng, code_rng = jax.random.split(jax.random.key(0))
  params = jax.jit(vq.VQVAE(cfg).init)(init_rng,
                                       jnp.zeros((1, resolution, resolution, 3)))['params']
  return cfg, params, vq.init_codebook_state(code_rng, cfg.codebook_size, cfg.embed_dim)


def bench_tokenizer_vq(resolution: int = 128, batch: int = 16, repeats: int = 5,
                       variant: str = 'vq') -> dict:
  """The trainable VQ tokenizer (``configs/tokenizer.py:variant``): uint8 frames -> codes."""
  from tokenizers_jax import vq
  cfg, params, state = _random_vq(variant, resolution)
  frames = _random_frames(batch, resolution)
  times = _time_calls(lambda: vq.encode(cfg, params, state, frames), repeats)
  return _tokenizer_record('vq', resolution, batch, times, batch, 'random weights',
                           variant=variant, codebook_size=cfg.codebook_size,
                           grid=resolution // cfg.downsample)


@contextlib.contextmanager
def _patched(module, name: str, value):
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


def bench_tokenizer_job(resolution: int = 128, batch: int = 16, repeats: int = 5,
                        videos: int = 8, variant: str = 'vq', clip_frames: int | None = None,
                        threads: int = 4) -> dict:
  """``launch.tokenize.tokenize`` over synthetic videos, one fresh output folder per repeat.

  The tokenizer is the VQ of ``configs/tokenizer.py:variant`` with random weights, handed to the
  job by replacing ``launch.tokenize.load_tokenizer`` (the rest of the job is unchanged) and
  compiled before the timed runs. Videos are 5:4 (160x128 at 128 px), long enough for one clip of
  ``tokenize.frames`` frames at ``tokenize.stride``. ``batch`` is unused (the job's own
  ``tokenize.batch_frames`` and the tokenizer's batch apply); it is reported as given.
  """
  import tempfile

  from configs import tokenizer as tokenizer_config
  from launch import tokenize as tokenize_lib
  from tokenizers_jax import api
  from tokenizers_jax import synthetic_video

  config = tokenizer_config.get_config(variant)
  config.data.resolution = resolution
  if clip_frames:
    config.tokenize.frames = clip_frames
  tk = config.tokenize
  video_frames = (tk.frames - 1) * tk.stride + 4   # 64 for the paper's 16 frames at stride 4
  height = resolution
  width = 2 * round(resolution * 5 / 8)            # even, for mp4
  cfg, params, state = _random_vq(variant, resolution)
  tokenizer = api.from_vq(cfg, params, state, resolution, name=f'{variant}-random')
  tokenizer.encode(np.zeros((1, resolution, resolution, 3), np.uint8))  # compile
  times, manifest = [], {}
  with tempfile.TemporaryDirectory(prefix='bench_tokenizer_') as tmp:
    synthetic_video.write_synthetic_videos(tmp, videos, frames=video_frames, height=height,
                                           width=width, fps=8, seed=0, split_name='bench',
                                           progress=False)
    with _patched(tokenize_lib, 'load_tokenizer', lambda _config: tokenizer):
      for r in range(max(repeats, 1)):
        manifest = tokenize_lib.tokenize(config, os.path.join(tmp, 'bench'),
                                         os.path.join(tmp, f'out{r}'), threads=threads,
                                         progress_bar=False)
        times.append(manifest['this_run']['seconds'])
  step = statistics.median(times)
  return _tokenizer_record(
      'job', resolution, batch, times, manifest['frames'],
      'random VQ weights; seconds are decoding + encoding + shard writing, tokenizer compiled '
      'beforehand', variant=variant, videos=videos, clips=manifest['clips'],
      frames=manifest['frames'], frames_per_clip=int(tk.frames), stride=int(tk.stride),
      video_frames=video_frames, video_size=f'{width}x{height}', threads=threads,
      batch_frames=int(tk.batch_frames), encoder_batch=tokenizer.batch_size,
      failed=manifest['failed'], clips_per_s=manifest['clips'] / step)


TOKENIZER_BENCHES = {'dvae': bench_tokenizer_dvae, 'vq': bench_tokenizer_vq,
                     'job': bench_tokenizer_job}


def bench_tokenizer(which: str = 'all', resolution: int = 128, batch: int = 16,
                    repeats: int = 5) -> list[dict]:
  """One record per tokenizer bench of ``which`` ('dvae', 'vq', 'job' or 'all'), printed as run."""
  names = list(TOKENIZER_BENCHES) if which == 'all' else [which]
  if any(n not in TOKENIZER_BENCHES for n in names):
    raise ValueError(f"--which must be one of {sorted(TOKENIZER_BENCHES)} or 'all', got {which!r}")
  results = []
  for name in names:
    results.append(TOKENIZER_BENCHES[name](resolution, batch, repeats))
    print(json.dumps(results[-1]), flush=True)
  return results


# ------------------------------------------------------------------------------------------------
# PHALP tracker
# ------------------------------------------------------------------------------------------------

PHALP_REFERENCE_MAX_BATCH = 16  # the NumPy reference takes ~ms per video-frame: time B <= 16


def phalp_scenes(videos: int, detections: int, frames: int, seed: int = 0
                 ) -> tuple[list, int]:
  """``videos`` synthetic scenes (``io.Detections``) of about ``detections`` usable detections per
  frame, and the number of people in each.

  The 'medium' preset (misses, false positives, a shot cut from 21 frames on, people leaving and
  re-entering) without occlusion (which caps a 1280x720 view at ~10 detections); the number of
  people is scaled from a probe scene so that the detections at the tracker's confidence threshold
  come out near the target.
  """
  from phalp_jax import io as phalp_io
  from phalp_jax import synthetic
  from phalp_jax.state import PhalpParams

  threshold = PhalpParams().conf_threshold
  cfg = lambda people: synthetic.get_config('medium', num_frames=frames, people=people,
                                            occlusion=False, shot_cuts=int(frames >= 21))
  probe = synthetic.make_scene(cfg(detections), seed=(seed, 10_000))
  rate = max(np.sum(probe['conf'] >= threshold) / frames / detections, 1e-3)
  people = max(1, round(detections / rate))

  return [phalp_io.from_scene(synthetic.make_scene(cfg(people), seed=(seed, i)),
                              source=f'synthetic-medium-{people}p')
          for i in range(videos)], people


def bench_phalp(batches: tuple[int, ...] = (1, 16, 64), capacity: int = 32, detections: int = 20,
                frames: int = 200, repeats: int = 3, reference: bool = False,
                lmc: bool = False) -> list[dict]:
  """One record per B (printed as run): ``track_batch`` wall time per video-frame, compiled
  beforehand; with ``reference`` the NumPy reference's on the same videos (B <= 16), the ratio
  and whether their rows are equal."""
  from phalp_jax import reference as reference_lib
  from phalp_jax import tracker
  from phalp_jax.state import PhalpParams

  params = PhalpParams(lmc=lmc)
  scenes, people = phalp_scenes(max(batches), detections, frames)
  usable = [int(np.sum(d.conf >= params.conf_threshold)) for d in scenes]
  results = []
  for b in batches:
    videos = scenes[:b]
    run = lambda: tracker.track_batch(videos, params, capacity, grow=False)
    rows = run()  # compiles; grow=False: a capacity overflow raises instead of re-running
    times = []
    for _ in range(max(repeats, 1)):
      t = time.perf_counter()
      run()
      times.append(time.perf_counter() - t)
    wall = statistics.median(times)
    video_frames = b * frames
    record = {
        'bench': 'phalp_track_batch', 'videos': b, 'frames': frames, 'capacity': capacity,
        'lmc': lmc, 'detections_per_frame': sum(len(d) for d in videos) / video_frames,
        'usable_detections_per_frame': sum(usable[:b]) / video_frames,
        'people': people, 'median_wall_s': wall, 'wall_s_all': times,
        'ms_per_video_frame': 1e3 * wall / video_frames,
        'video_frames_per_s': video_frames / wall, 'frames_per_s_per_video': frames / wall,
        'device': jax.devices()[0].platform, 'cpu_count': os.cpu_count(), 'jax': jax.__version__,
    }
    if reference and b <= PHALP_REFERENCE_MAX_BATCH and not lmc:
      t = time.perf_counter()
      ref_rows = reference_lib.track_batch(videos, params)
      ref_wall = time.perf_counter() - t
      record.update({
          'reference_wall_s': ref_wall,
          'reference_ms_per_video_frame': 1e3 * ref_wall / video_frames,
          'reference_over_jax': ref_wall / wall,
          'reference_rows_equal': all(np.array_equal(x, y) for x, y in zip(rows, ref_rows)),
      })
    results.append(record)
    print(json.dumps(record), flush=True)
  return results


def main(argv) -> None:
  from absl import flags
  fl = flags.FLAGS
  if len(argv) >= 2 and argv[1] == 'tokenizer':
    bench_tokenizer(fl.which, fl.resolution, fl.batch or 16, fl.repeats)
    return
  if len(argv) >= 2 and argv[1] == 'decode':
    print(json.dumps(bench_decode(fl.config, fl.seq_len, fl.prompt_len, fl.new_tokens,
                                  fl.batch or 1, fl.repeats)), flush=True)
    return
  if len(argv) >= 2 and argv[1] == 'compare':
    result = compare_toto(fl.config, fl.variant or [], fl.seq_len, fl.batch or 1, fl.rounds,
                          fl.warmup)
    print(format_comparison(result), file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)
    return
  if len(argv) >= 2 and argv[1] == 'profile':
    from launch import op_profile
    result = profile_toto(fl.config, fl.seq_len, fl.batch or 1, fl.warmup, fl.trace_dir, fl.top)
    print(op_profile.format_table(result), file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)
    return
  if len(argv) >= 2 and argv[1] == 'phalp':
    batches = tuple(int(b) for b in fl.batches.split(',') if b.strip())
    bench_phalp(batches, fl.capacity, fl.detections, fl.frames,
                fl.repeats if fl['repeats'].present else 3, fl.reference, fl.lmc)
    return
  if len(argv) < 2 or argv[1] not in BENCHES:
    raise SystemExit('usage: python -m launch.bench {toto|toto_breakdown|torch_llama|lart} --config '
                     'configs/toto.py:VARIANT [--seq_len N] [--batch B] [--steps S]\n'
                     '       python -m launch.bench tokenizer [--which dvae|vq|job|all] '
                     '[--resolution R] [--batch B] [--repeats N]\n'
                     '       python -m launch.bench compare --config configs/toto.py:VARIANT '
                     '--variant NAME[:FIELD=VALUE;...] --variant ... [--rounds R]\n'
                     '       python -m launch.bench profile --config configs/toto.py:VARIANT '
                     '[--seq_len N] [--batch B] [--trace_dir DIR] [--top K]\n'
                     '       python -m launch.bench decode --config configs/toto.py:VARIANT '
                     '[--seq_len N] [--prompt_len P] [--new_tokens N] [--repeats N]\n'
                     '       python -m launch.bench phalp [--batches 1,16,64] [--capacity K] '
                     '[--detections D] [--frames T] [--repeats N] [--reference] [--lmc]')
  result = BENCHES[argv[1]](fl.config, fl.seq_len, fl.batch or 1, fl.steps, fl.warmup)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/toto.py:VARIANT', lock_config=False)
  flags.DEFINE_integer('seq_len', None, 'Model input length (default: model.max_len).')
  flags.DEFINE_integer('batch', None, 'Sequences per step (default 1); tokenizer: frames per '
                       'encoder call (default 16).')
  flags.DEFINE_integer('steps', 5, 'Timed steps (median reported).')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps first (compilation).')
  flags.DEFINE_enum('which', 'all', ['dvae', 'vq', 'job', 'all'], 'tokenizer: what to time.')
  flags.DEFINE_integer('resolution', 128, 'tokenizer: frame side in pixels.')
  flags.DEFINE_integer('repeats', 5, 'tokenizer: timed calls (job: runs), median reported; '
                       'phalp: timed track_batch calls (default 3).')
  flags.DEFINE_string('batches', '1,16,64', 'phalp: comma-separated numbers of videos B.')
  flags.DEFINE_integer('capacity', 32, 'phalp: tracklet slots K per video.')
  flags.DEFINE_integer('detections', 20, 'phalp: target usable detections per frame.')
  flags.DEFINE_integer('frames', 200, 'phalp: frames per video.')
  flags.DEFINE_bool('reference', False, 'phalp: also time the NumPy reference (B <= 16).')
  flags.DEFINE_bool('lmc', False, 'phalp: run the tracker with LMC (no reference comparison).')
  flags.DEFINE_integer('prompt_len', None, 'decode: prompt tokens (default: half the context).')
  flags.DEFINE_multi_string('variant', None, 'compare: NAME:FIELD=VALUE;FIELD=VALUE (repeat; '
                            'the first is the reference).')
  flags.DEFINE_integer('rounds', 5, 'compare: timed rounds (each variant once per round).')
  flags.DEFINE_string('trace_dir', None, 'profile: keep the trace here (TensorBoard / Perfetto).')
  flags.DEFINE_integer('top', 20, 'profile: slowest ops listed.')
  flags.DEFINE_integer('new_tokens', None, 'decode: tokens to generate (default: fill the context).')
  if sys.argv[1:2] not in (['tokenizer'], ['phalp']):
    flags.mark_flags_as_required(['config'])
  app.run(main)
