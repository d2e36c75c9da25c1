r"""Ahead-of-time scale check: compile the real train step for a TPU slice on a CPU-only machine.

  python -m launch.aot --config configs/toto.py:1b --topology v5p-128 [--mfu 0.5] \
      [--num_slices 1] [--tokens 1e12] [--output aot.json] [--config.train.microbatch_size=64 ...]

Builds the mesh of ``config.mesh`` over the slice's compile-only TPU devices
(``jax.experimental.topologies.get_topology_desc``; needs ``libtpu`` from PyPI, no TPU), then lowers
and compiles the trainer's own step (``launch.train.make_train_step`` with the state and batch
shardings the trainer uses, donation included) for the config's global batch. It prints a table and
one JSON line: per-chip memory from the compiled executable (arguments + outputs - donated aliases
+ temporaries + code) against the chip's HBM, the compiler's FLOP count, the analytic model FLOPs
(the task's ``train_flops_per_example``, the MFU numerator) and the projected time for ``--tokens``
tokens at ``--mfu`` of the bf16 peak. Exit status 0 when it fits, 1 when it does not, 2 for a
config error (the message names the field).

The compute dtype defaults to bfloat16 for this command (``--config.model.dtype=...`` overrides).
The batch is the one the task's data pipeline yields; for Toto the file sources are swapped for the
synthetic source of the same geometry (``--data=config`` keeps them), since shapes are all that
matter here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

# libtpu must not probe the GCE metadata server for a real TPU on this (CPU) machine, and, as it
# only compiles here (no chips to share), several processes (pytest-xdist workers, two checks at
# once) may load it without fighting over /tmp/libtpu_lockfile.
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

from launch import checkpoint as ckpt_lib  # noqa: E402
from launch import flops as flops_lib  # noqa: E402
from launch import sharding as shard_lib  # noqa: E402
from launch import tasks as tasks_lib  # noqa: E402
from launch import train as train_lib  # noqa: E402
from launch.sharding import ConfigError  # noqa: E402
from launch.tpu_pod import Accelerator, parse_accelerator  # noqa: E402
from phalp_jax import io as io_lib  # noqa: E402


def topology_devices(acc: Accelerator, num_slices: int = 1) -> list:
  """Compile-only devices of ``num_slices`` slices of ``acc`` (one device per chip)."""
  from jax.experimental import topologies
  try:
    topo = topologies.get_topology_desc(
        platform='tpu', topology_name=acc.topology_name,
        chip_config_name=acc.generation.chip_config,
        chips_per_host_bounds=acc.chips_per_host_bounds, num_slices=num_slices, wrap=acc.wrap)
  except Exception as e:  # missing libtpu, unknown topology: say which and how to get it
    raise RuntimeError(f'cannot describe TPU topology {acc.topology_name} ({acc.name}): {e}. '
                       f'The AOT check needs libtpu (pip install -e ".[tpu]" or the libtpu '
                       f'version jax[tpu] pins)') from e
  return list(topo.devices)


def peak_flops(device_kind: str) -> tuple[float, str]:
  """Dense bf16 peak of one chip from the trainer's table (``launch.flops.ACCELERATOR_PEAKS``)."""
  for key, peak in flops_lib.ACCELERATOR_PEAKS:
    if key.lower() in device_kind.lower():
      return peak, f'datasheet dense bf16 peak of {device_kind} (launch/flops.py)'
  raise KeyError(f'no peak FLOP/s for device kind {device_kind!r} in launch/flops.py')


def topology_mesh(mesh_cfg, devices: Sequence[Any]):
  """The trainer's ``(data, fsdp, tensor)`` mesh over ``devices``, laid out along the torus."""
  if shard_lib.num_slices_of(devices) > 1:
    return shard_lib.make_mesh(mesh_cfg, devices)  # hybrid ICI x DCN mesh
  ici, dcn = shard_lib.mesh_shape(mesh_cfg, len(devices), 1)
  shape = tuple(i * d for i, d in zip(ici, dcn))
  return jax.make_mesh(shape, shard_lib.MESH_AXES, axis_types=(AxisType.Auto,) * len(shape),
                       devices=list(devices))


def example_shapes(task, config, data: str = 'synthetic') -> dict[str, jax.ShapeDtypeStruct]:
  """Shape and dtype of one example of every batch array, from one batch of the task's data."""
  if data == 'synthetic' and 'sources' in config.data:
    with config.unlocked():
      config.data.sources = {'synthetic': {'pattern': 'synthetic', 'weight': 1.0, 'kind': 'video'}}
      config.data.synthetic_clips = max(int(config.data.get('synthetic_clips', 1)), 8)
  batch = next(iter(task.train_data(seed=0, process_index=0, process_count=1, batch_size=1)))
  return {k: jax.ShapeDtypeStruct(np.asarray(v).shape[1:], np.asarray(v).dtype)
          for k, v in batch.items()}


@dataclasses.dataclass
class Report:
  fits: bool
  summary: dict

  def table(self) -> str:
    s = self.summary
    gib = lambda b: f'{b / 2 ** 30:8.3f} GiB'  # noqa: E731
    rows = [
        ('config', s['config']),
        ('topology', f"{s['topology']} x {s['num_slices']} slice(s): {s['chips']} chips "
                     f"({s['device_kind']}), mesh {s['mesh']}"),
        ('model', f"{s['params'] / 1e9:.3f}B params, dtype {s['dtype']}, remat "
                  f"{s['remat_policy']}, attention {s['attention_impl']}"),
        ('batch', f"global {s['global_batch_size']} = {s['accumulation']} x "
                  f"{s['microbatch_size']} sequences, {s['tokens_per_step']:,} tokens/step"),
    ]
    m = s['memory']
    if m is None:
      rows.append(('total / chip', f"DOES NOT FIT in {gib(s['hbm_bytes_per_chip'])} HBM; the "
                                   f"compiler says: {s['compile_error']}"))
    else:
      rows += [
          ('arguments / chip', gib(m['argument_bytes'])),
          ('outputs / chip', gib(m['output_bytes'])),
          ('donated (alias)', gib(m['alias_bytes'])),
          ('temporaries / chip', gib(m['temp_bytes'])),
          ('code / chip', gib(m['code_bytes'])),
          ('total / chip', f"{gib(m['total_bytes'])} of {gib(s['hbm_bytes_per_chip'])} HBM "
                           f"({100 * m['hbm_fraction']:.1f}%): "
                           f"{'FITS' if self.fits else 'DOES NOT FIT'}"),
      ]
    rows += [
        ('model FLOPs / step', f"{s['model_flops_per_step']:.4g} (6N + attention, "
                               f"{s['model_flops_per_token']:.4g} per token)"),
        ('compiled FLOPs / chip', f"{s['compiled_flops_per_chip']:.4g} (XLA cost analysis of "
                                  f"one step; loop bodies counted once)"),
        ('peak / chip', f"{s['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s bf16"),
        (f"time for {s['tokens']:.3g} tokens", f"{s['projected_days']:.1f} days at MFU "
                                               f"{s['mfu']:.2f} ({s['projected_step_s']:.2f} "
                                               f"s/step)"),
    ]
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def check(config, acc: Accelerator, *, num_slices: int = 1, mfu: float = 0.5,
          tokens: float = 1e12, data: str = 'synthetic', config_name: str = '') -> Report:
  """Lowers and compiles ``config``'s train step for ``num_slices`` x ``acc``; see the module."""
  if not 0 < mfu <= 1:
    raise ConfigError(f'--mfu must be in (0, 1], got {mfu}')
  devices = topology_devices(acc, num_slices)
  if 'attention_impl' in config.model and config.model.attention_impl is None:
    # None picks by jax.default_backend(), which is the CPU here; on the TPU it is XLA's.
    with config.unlocked():
      config.model.attention_impl = 'xla'
  task = tasks_lib.get_task(config)
  processes = len({d.process_index for d in devices})
  shapes = example_shapes(task, config, data)
  train_lib.validate_config(config, task, devices, processes)
  t = config.train
  accumulation = train_lib.accumulation_steps(t)
  micro = t.global_batch_size // accumulation
  mesh = topology_mesh(config.mesh, devices)
  rules = shard_lib.rules_of(config)

  # Abstract keys only: nothing may be placed on compile-only devices.
  key = jax.eval_shape(lambda: jax.random.split(jax.random.key(config.seed))[0])
  tx = train_lib.make_tx(task, t)  # with the task's per-parameter lrs (muP, layer decay)
  with nn.logical_axis_rules(rules):  # outside set_mesh: optax builds a concrete template state
    abstract_state, shardings = train_lib.state_shardings(task, tx, mesh, rules, key)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    rep = shard_lib.replicated(mesh)
    placer = train_lib.BatchPlacer(mesh, rules, task.batch_axes(), accumulation, micro)
    batch_shardings = {k: placer.sharding(k) for k in task.batch_axes()}
    abstract_batch = {k: jax.ShapeDtypeStruct((accumulation, micro) + shapes[k].shape,
                                              shapes[k].dtype, sharding=batch_shardings[k])
                      for k in task.batch_axes()}
    abstract_rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
    step = train_lib.jit_train_step(task, tx, shardings, batch_shardings, rep)
    lowered = step.lower(ckpt_lib.abstract_with_shardings(abstract_state, shardings),
                         abstract_batch, abstract_rng)
    compile_error = None
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses what exceeds HBM
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      compiled, compile_error = None, str(e).strip().splitlines()[0]

  hbm = acc.generation.hbm_bytes
  if compiled is not None:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    memory = {'argument_bytes': mem.argument_size_in_bytes,
              'output_bytes': mem.output_size_in_bytes,
              'alias_bytes': mem.alias_size_in_bytes, 'temp_bytes': mem.temp_size_in_bytes,
              'code_bytes': mem.generated_code_size_in_bytes, 'total_bytes': total,
              'hbm_fraction': total / hbm}
    fits = total <= hbm
  else:
    memory, cost, fits = None, {}, False
  chips = len(devices)
  peak, peak_source = peak_flops(devices[0].device_kind)
  flops_per_token = task.train_flops_per_example() / task.tokens_per_example()
  tokens_per_step = t.global_batch_size * task.tokens_per_example()
  seconds = tokens * flops_per_token / (chips * peak * mfu)
  params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract_state['params']))
  summary = {
      'config': config_name, 'topology': acc.name, 'topology_name': acc.topology_name,
      'num_slices': num_slices, 'chips': chips, 'hosts': acc.hosts * num_slices,
      'device_kind': devices[0].device_kind, 'mesh': shard_lib.describe(mesh),
      'params': params, 'dtype': config.model.get('dtype', 'float32'),
      'remat_policy': config.model.get('remat_policy', 'none'),
      'attention_impl': config.model.get('attention_impl', None),
      'global_batch_size': t.global_batch_size, 'microbatch_size': micro,
      'accumulation': accumulation, 'tokens_per_step': tokens_per_step,
      'memory': memory, 'compile_error': compile_error,
      'hbm_bytes_per_chip': hbm, 'hbm_source': acc.generation.source, 'fits': fits,
      'compiled_flops_per_chip': float(cost.get('flops', float('nan'))),
      'model_flops_per_token': flops_per_token,
      'model_flops_per_step': flops_per_token * tokens_per_step,
      'peak_flops_per_chip': peak, 'peak_source': peak_source, 'mfu': mfu, 'tokens': tokens,
      'projected_seconds': seconds, 'projected_days': seconds / 86400,
      'projected_step_s': seconds * tokens_per_step / tokens,
  }
  return Report(fits, summary)


def main(argv) -> None:
  from absl import flags
  del argv
  f = flags.FLAGS
  config = f.config
  # bf16 compute unless the command line names a dtype.
  if not any(a.startswith('--config.model.dtype') for a in sys.argv[1:]):
    config.model.dtype = 'bfloat16'
  try:
    acc = parse_accelerator(f.topology)
    report = check(config, acc, num_slices=f.num_slices, mfu=f.mfu, tokens=f.tokens, data=f.data,
                   config_name=f['config'].config_filename if hasattr(f['config'], 'config_filename')
                   else '')
  except (ConfigError, ValueError) as e:
    print(f'config error: {e}', file=sys.stderr)
    sys.exit(2)
  print(report.table())
  print(json.dumps(report.summary, sort_keys=True))
  if f.output:
    io_lib.write_json(f.output, report.summary, sort_keys=True)
  sys.exit(0 if report.fits else 1)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/FILE.py:VARIANT', lock_config=True)
  flags.DEFINE_string('topology', None, 'TPU slice, e.g. v5p-128, v5e-256, v4-8, v5p:4x4x12')
  flags.DEFINE_integer('num_slices', 1, 'slices joined over DCN (set config.mesh.dcn to match)')
  flags.DEFINE_float('mfu', 0.5, 'model FLOPs utilisation assumed for the projected time')
  flags.DEFINE_float('tokens', 1e12, 'training tokens for the projected time')
  flags.DEFINE_enum('data', 'synthetic', ['synthetic', 'config'],
                    'batch shapes from the synthetic source of the same geometry or the config')
  flags.DEFINE_string('output', None, 'also write the JSON summary here (atomically)')
  flags.mark_flags_as_required(['config', 'topology'])
  app.run(main)
