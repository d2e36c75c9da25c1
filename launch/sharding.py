"""Device mesh over ``(data, fsdp, tensor)`` and the logical-axis rules that place arrays on it.

The mesh sizes come from ``config.mesh.ici`` (inside a slice) and ``config.mesh.dcn`` (across
slices), with ``-1`` meaning "whatever is left". The rules table ``config.sharding_rules`` maps the
logical names models put on their parameters and activations onto mesh axes; nothing else in the
project names a mesh axis.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')


class ConfigError(ValueError):
  """A configuration value that cannot work; the message names the field."""


def resolve_axis_sizes(sizes: dict[str, int], total: int, field: str) -> tuple[int, ...]:
  """Fills the single ``-1`` in ``sizes`` so the product equals ``total``."""
  values = [int(sizes[a]) for a in MESH_AXES]
  unknown = [a for a, v in zip(MESH_AXES, values) if v == -1]
  if len(unknown) > 1:
    raise ConfigError(f'{field}: at most one axis may be -1, got {dict(zip(MESH_AXES, values))}')
  for a, v in zip(MESH_AXES, values):
    if v == 0 or v < -1:
      raise ConfigError(f'{field}.{a} must be a positive size or -1, got {v}')
  known = math.prod(v for v in values if v != -1)
  if unknown:
    if total % known:
      raise ConfigError(f'{field}: the fixed axes multiply to {known}, which does not divide '
                        f'the {total} devices available')
    values[MESH_AXES.index(unknown[0])] = total // known
  elif known != total:
    raise ConfigError(f'{field}: axes multiply to {known} but {total} devices are available '
                      f'({dict(zip(MESH_AXES, values))}); use -1 for one axis')
  return tuple(values)


def mesh_shape(mesh_cfg, num_devices: int, num_slices: int = 1) -> tuple[tuple[int, ...],
                                                                          tuple[int, ...]]:
  """(ICI shape, DCN shape) for ``num_devices`` spread over ``num_slices`` slices."""
  if num_devices % num_slices:
    raise ConfigError(f'{num_devices} devices do not split evenly into {num_slices} slices')
  dcn = resolve_axis_sizes(mesh_cfg.dcn, num_slices, 'mesh.dcn')
  ici = resolve_axis_sizes(mesh_cfg.ici, num_devices // num_slices, 'mesh.ici')
  return ici, dcn


def num_slices_of(devices: Sequence[Any]) -> int:
  return len({getattr(d, 'slice_index', 0) for d in devices})


def make_mesh(mesh_cfg, devices: Sequence[Any] | None = None) -> Mesh:
  """Builds the ``(data, fsdp, tensor)`` mesh; hybrid ICI x DCN when there are several slices."""
  devices = list(jax.devices() if devices is None else devices)
  slices = num_slices_of(devices)
  ici, dcn = mesh_shape(mesh_cfg, len(devices), slices)
  types = (AxisType.Auto,) * len(MESH_AXES)
  if slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return Mesh(grid, MESH_AXES, axis_types=types)
  shape = tuple(i * d for i, d in zip(ici, dcn))
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=types)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=types)


def rules_of(config) -> tuple[tuple[str, Any], ...]:
  """The logical-axis rules as the tuple-of-tuples Flax expects, validated against the mesh axes."""
  rules = []
  for i, rule in enumerate(config.sharding_rules):
    if len(rule) != 2:
      raise ConfigError(f'sharding_rules[{i}] must be [logical_name, mesh_axes], got {rule!r}')
    name, target = rule
    targets = target if isinstance(target, (tuple, list)) else (target,)
    for t in targets:
      if t is not None and t not in MESH_AXES:
        raise ConfigError(f'sharding_rules[{i}] ({name!r}) names mesh axis {t!r}; '
                          f'mesh axes are {MESH_AXES}')
    rules.append((name, tuple(target) if isinstance(target, (tuple, list)) else target))
  return tuple(rules)


def logical_sharding(mesh: Mesh, rules, logical_axes: Sequence[str | None]) -> NamedSharding:
  spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def axis_size(mesh: Mesh, logical_name: str, rules) -> int:
  """How many ways ``logical_name`` is split on ``mesh`` under ``rules``."""
  spec = nn.logical_to_mesh_axes((logical_name,), rules)[0]
  if spec is None:
    return 1
  names = spec if isinstance(spec, tuple) else (spec,)
  return math.prod(mesh.shape[n] for n in names)


def describe(mesh: Mesh) -> str:
  return ' x '.join(f'{n}={s}' for n, s in mesh.shape.items())


def unbox(tree: Any) -> Any:
  """Strips Flax ``Partitioned`` boxes without applying sharding constraints (works on abstract
  values outside ``jit``; placement comes from explicit shardings instead)."""
  return jax.tree_util.tree_map(
      lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
