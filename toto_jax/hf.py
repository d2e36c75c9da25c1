"""Hugging Face LLaMA <-> Toto weight conversion, without torch.

Toto's ``llama`` architecture is the Hugging Face ``LlamaForCausalLM`` computation (pre-norm
RMSNorm, SwiGLU, half-split "rotate_half" RoPE, no biases, grouped key/value heads), so a checkpoint
moves across by transposes and reshapes only: no q/k permutation is needed. This module maps

* a ``config.json`` dict  -> a Toto model ``ConfigDict``  (:func:`config_from_hf`) and back
  (:func:`config_to_hf`);
* a ``LlamaForCausalLM`` state dict of NumPy arrays -> plain Toto params (:func:`params_from_hf`)
  and back (:func:`params_to_hf`).

Bringing a Hugging Face checkpoint in (no torch needed; ``safetensors`` is an optional extra,
``pip install safetensors``, not a dependency of this package)::

  import glob, json
  from safetensors.numpy import load_file
  from toto_jax import hf
  from toto_jax.model import Toto

  hf_config = json.load(open('ckpt/config.json'))
  state_dict = {}
  for f in sorted(glob.glob('ckpt/*.safetensors')):   # sharded checkpoints: merge the shards
    state_dict.update(load_file(f))
  config = hf.config_from_hf(hf_config)
  params = hf.params_from_hf(state_dict, config)       # float32, vocabulary padded to 128
  logits = Toto(config).apply({'params': params}, tokens)[..., :config.vocab_size]

NumPy has no bfloat16 type; if ``safetensors.numpy`` refuses a bf16 checkpoint, load it with
``safetensors.flax.load_file`` instead (JAX arrays are accepted too). A ``pytorch_model.bin``
checkpoint is a pickle of torch tensors; convert it to safetensors once in an environment that has
torch (``transformers`` does this with ``save_pretrained(..., safe_serialization=True)``).
``config_from_hf`` returns a float32 inference config; set ``config.dtype = 'bfloat16'`` and a
``remat_policy`` for fine-tuning on accelerators as with any Toto config.

Serving a Toto model with Hugging Face tools (``transformers.LlamaForCausalLM.from_pretrained``,
vLLM, ...)::

  import json, os
  from safetensors.numpy import save_file

  os.makedirs('export', exist_ok=True)
  save_file(hf.params_to_hf(params, config.model), 'export/model.safetensors',
            metadata={'format': 'pt'})
  with open('export/config.json', 'w') as f:
    json.dump(hf.config_to_hf(config.model), f, indent=2)

``params_to_hf`` accepts the boxed (``nn.Partitioned``) tree of ``model.init`` or a plain one,
drops the padded vocabulary rows and returns float32 arrays. Only the ``llama`` architecture has a
Hugging Face counterpart. ``config_to_hf`` leaves ``bos_token_id``/``eos_token_id`` unset: Toto's
reserved ids (pad, video start, end, image start) are a data-pipeline convention, so set them for
your tokenizer before calling ``generate``.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.traverse_util
import jax
import ml_collections
import numpy as np

from configs import toto as toto_configs
from toto_jax.model import (padded_vocab_size, plain_params, scans_layers, stack_layers,
                            unstack_layers)

# LlamaConfig defaults (transformers) for optional keys.
_HF_DEFAULTS = {
    'rms_norm_eps': 1e-6,
    'rope_theta': 10000.0,
    'max_position_embeddings': 2048,
    'tie_word_embeddings': False,
    'hidden_act': 'silu',
}
_REQUIRED_KEYS = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
                  'num_attention_heads')
_SUPPORTED_MODEL_TYPES = ('llama', 'mistral')


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

def _rope_theta(hf_config: Mapping[str, Any]) -> float:
  """``rope_theta`` from either the classic keys or the newer ``rope_parameters`` dict."""
  if hf_config.get('rope_scaling') is not None:
    raise ValueError(f'rope_scaling={hf_config["rope_scaling"]!r} is not supported: Toto '
                     'implements plain RoPE only (rope_scaling must be None)')
  rope_parameters = hf_config.get('rope_parameters')
  if rope_parameters is not None:
    rope_type = rope_parameters.get('rope_type', rope_parameters.get('type', 'default'))
    if rope_type != 'default':
      raise ValueError(f'rope_parameters.rope_type={rope_type!r} is not supported: Toto implements '
                       "plain RoPE only (rope_type must be 'default')")
    if 'rope_theta' in rope_parameters:
      return float(rope_parameters['rope_theta'])
  theta = hf_config.get('rope_theta')
  return float(_HF_DEFAULTS['rope_theta'] if theta is None else theta)


def config_from_hf(hf_config: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A Toto model config (``arch='llama'``) equivalent to a ``LlamaConfig`` dict.

  Raises ValueError, naming the key, for anything Toto does not compute: RoPE scaling, attention
  or MLP biases, activations other than SiLU, a ``head_dim`` other than hidden_size / heads, or a
  Mistral sliding window shorter than the context.
  """
  hf_config = dict(hf_config)
  missing = [k for k in _REQUIRED_KEYS if hf_config.get(k) is None]
  if missing:
    raise ValueError(f'HF config is missing required key(s) {missing}')
  model_type = hf_config.get('model_type')
  if model_type is not None and model_type not in _SUPPORTED_MODEL_TYPES:
    raise ValueError(f'model_type={model_type!r} is not supported; expected one of '
                     f'{list(_SUPPORTED_MODEL_TYPES)}')
  hidden_act = hf_config.get('hidden_act', _HF_DEFAULTS['hidden_act'])
  if hidden_act != 'silu':
    raise ValueError(f"hidden_act={hidden_act!r} is not supported: Toto's MLP is SwiGLU ('silu')")
  for key in ('attention_bias', 'mlp_bias'):
    if hf_config.get(key):
      raise ValueError(f'{key}=True is not supported: Toto llama layers have no biases')
  rope_base = _rope_theta(hf_config)

  dim = int(hf_config['hidden_size'])
  heads = int(hf_config['num_attention_heads'])
  kv_heads = hf_config.get('num_key_value_heads')
  kv_heads = heads if kv_heads is None else int(kv_heads)
  if dim % heads:
    raise ValueError(f'hidden_size={dim} is not divisible by num_attention_heads={heads}')
  if heads % kv_heads:
    raise ValueError(f'num_attention_heads={heads} is not divisible by '
                     f'num_key_value_heads={kv_heads}')
  head_dim = hf_config.get('head_dim')
  if head_dim is not None and int(head_dim) != dim // heads:
    raise ValueError(f'head_dim={head_dim} is not supported: Toto requires head_dim == '
                     f'hidden_size // num_attention_heads = {dim // heads}')
  max_len = int(hf_config.get('max_position_embeddings') or _HF_DEFAULTS['max_position_embeddings'])
  sliding_window = hf_config.get('sliding_window')
  if hf_config.get('use_sliding_window', True) and sliding_window is not None \
      and int(sliding_window) < max_len:
    raise ValueError(f'sliding_window={sliding_window} is not supported: Toto attends over the '
                     f'whole context (max_position_embeddings={max_len})')

  m = toto_configs.model_config('tiny', 'llama')
  m.vocab_size = int(hf_config['vocab_size'])
  m.dim = dim
  m.num_heads = heads
  m.num_kv_heads = kv_heads
  m.num_layers = int(hf_config['num_hidden_layers'])
  m.mlp_dim = int(hf_config['intermediate_size'])
  m.max_len = max_len
  m.rope_base = rope_base
  eps = hf_config.get('rms_norm_eps')
  m.norm_eps = float(_HF_DEFAULTS['rms_norm_eps'] if eps is None else eps)
  m.dtype = 'float32'
  m.remat_policy = 'none'
  m.scan_layers = True
  m.causal = True
  m.attention_impl = None
  tied = hf_config.get('tie_word_embeddings')
  m.tie_word_embeddings = bool(_HF_DEFAULTS['tie_word_embeddings'] if tied is None else tied)
  return m


def _model_config(config):
  """Accepts a model config or a full run config (with a ``model`` block)."""
  if not hasattr(config, 'dim') and hasattr(config, 'model'):
    config = config.model
  return config


def _tied(config) -> bool:
  return bool(getattr(config, 'tie_word_embeddings', False))


def _check_llama(config, what: str):
  if getattr(config, 'arch', 'llama') != 'llama':
    raise ValueError(f'{what}: only arch="llama" has a Hugging Face LLaMA counterpart, '
                     f'got arch={config.arch!r}')
  if not getattr(config, 'causal', True):
    raise ValueError(f'{what}: causal=False has no Hugging Face LLaMA counterpart')
  if config.dim % config.num_heads:
    raise ValueError(f'{what}: dim={config.dim} is not divisible by num_heads={config.num_heads}')


def config_to_hf(config) -> dict:
  """A ``LlamaConfig``-style dict (``config.json``) for a Toto ``llama`` model config."""
  config = _model_config(config)
  _check_llama(config, 'config_to_hf')
  heads = int(config.num_heads)
  return {
      'architectures': ['LlamaForCausalLM'],
      'model_type': 'llama',
      'vocab_size': int(config.vocab_size),
      'hidden_size': int(config.dim),
      'intermediate_size': int(config.mlp_dim),
      'num_hidden_layers': int(config.num_layers),
      'num_attention_heads': heads,
      'num_key_value_heads': int(config.num_kv_heads or heads),
      'head_dim': int(config.dim) // heads,
      'hidden_act': 'silu',
      'max_position_embeddings': int(config.max_len),
      'rms_norm_eps': float(config.norm_eps),
      'rope_theta': float(config.rope_base),
      'rope_scaling': None,
      'attention_bias': False,
      'attention_dropout': 0.0,
      'mlp_bias': False,
      'pretraining_tp': 1,
      'tie_word_embeddings': _tied(config),
      'initializer_range': 0.02,
      'use_cache': True,
      'bos_token_id': None,
      'eos_token_id': None,
      'torch_dtype': 'float32',
  }


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

def _dims(config):
  d, h = int(config.dim), int(config.num_heads)
  kvh = int(config.num_kv_heads or h)
  return d, h, kvh, d // h, int(config.mlp_dim), int(config.num_layers), int(config.vocab_size)


def hf_shapes(config) -> dict[str, tuple[int, ...]]:
  """Expected ``LlamaForCausalLM`` state-dict keys and shapes for a Toto model config."""
  config = _model_config(config)
  d, h, kvh, hd, m, n_layers, v = _dims(config)
  shapes = {'model.embed_tokens.weight': (v, d)}
  for i in range(n_layers):
    p = f'model.layers.{i}.'
    shapes[p + 'input_layernorm.weight'] = (d,)
    shapes[p + 'self_attn.q_proj.weight'] = (h * hd, d)
    shapes[p + 'self_attn.k_proj.weight'] = (kvh * hd, d)
    shapes[p + 'self_attn.v_proj.weight'] = (kvh * hd, d)
    shapes[p + 'self_attn.o_proj.weight'] = (d, h * hd)
    shapes[p + 'post_attention_layernorm.weight'] = (d,)
    shapes[p + 'mlp.gate_proj.weight'] = (m, d)
    shapes[p + 'mlp.up_proj.weight'] = (m, d)
    shapes[p + 'mlp.down_proj.weight'] = (d, m)
  shapes['model.norm.weight'] = (d,)
  if not _tied(config):
    shapes['lm_head.weight'] = (v, d)
  return shapes


def _is_ignorable(key: str) -> bool:
  return key.endswith('rotary_emb.inv_freq')


def _check_present_with_shapes(arrays: dict, expected: dict, fn: str, what: str) -> None:
  """Every expected name is present with its expected shape; errors name it and the shape."""
  for key, shape in expected.items():
    if key not in arrays:
      raise ValueError(f'{fn}: missing {what} {key!r} (expected shape {shape})')
    got = tuple(np.shape(arrays[key]))
    if got != shape:
      raise ValueError(f'{fn}: {what} {key!r} has shape {got}, expected shape {shape}')


def params_from_hf(state_dict: Mapping[str, Any], config) -> dict:
  """Plain Toto params (float32 NumPy arrays) from a ``LlamaForCausalLM`` state dict.

  ``state_dict`` maps HF key names to arrays (NumPy, JAX, or anything ``np.asarray`` takes). The
  vocabulary is zero-padded to ``padded_vocab_size(vocab_size)``. With
  ``config.tie_word_embeddings`` the output head is copied from the embedding (a ``lm_head.weight``
  that equals the embedding, as ``model.state_dict()`` of a tied model has, is accepted). The
  layers come stacked, or one entry per layer when ``config.scan_layers`` is False.
  """
  config = _model_config(config)
  _check_llama(config, 'params_from_hf')
  d, h, kvh, hd, m, n_layers, v = _dims(config)
  vpad = padded_vocab_size(v)
  expected = hf_shapes(config)
  tied = _tied(config)

  _check_present_with_shapes(state_dict, expected, 'params_from_hf', 'key')
  extra = sorted(k for k in state_dict if k not in expected and not _is_ignorable(k)
                 and not (tied and k == 'lm_head.weight'))
  if extra:
    raise ValueError(f'params_from_hf: unexpected key(s) {extra}')

  def get(key):
    return np.asarray(state_dict[key]).astype(np.float32)

  embed = get('model.embed_tokens.weight')
  if tied and 'lm_head.weight' in state_dict:
    lm = get('lm_head.weight')
    if lm.shape != (v, d):
      raise ValueError(f'params_from_hf: key \'lm_head.weight\' has shape {lm.shape}, expected '
                       f'shape {(v, d)}')
    if not np.array_equal(lm, embed):
      raise ValueError("params_from_hf: tie_word_embeddings=True but 'lm_head.weight' differs from "
                       "'model.embed_tokens.weight'; set tie_word_embeddings=False")
  lm_head = embed if tied else get('lm_head.weight')

  def stack(name, fn):
    return np.stack([fn(get(f'model.layers.{i}.{name}')) for i in range(n_layers)])

  embed_padded = np.zeros((vpad, d), np.float32)
  embed_padded[:v] = embed
  head_padded = np.zeros((d, vpad), np.float32)
  head_padded[:, :v] = lm_head.T
  params = {
      'embed': embed_padded,
      'layers': {
          'attn_norm': {'scale': stack('input_layernorm.weight', lambda w: w)},
          'attn': {
              'query': {'kernel': stack('self_attn.q_proj.weight',
                                        lambda w: w.T.reshape(d, h, hd))},
              'key': {'kernel': stack('self_attn.k_proj.weight',
                                      lambda w: w.T.reshape(d, kvh, hd))},
              'value': {'kernel': stack('self_attn.v_proj.weight',
                                        lambda w: w.T.reshape(d, kvh, hd))},
              'out': {'kernel': stack('self_attn.o_proj.weight', lambda w: w.T.reshape(h, hd, d))},
          },
          'mlp_norm': {'scale': stack('post_attention_layernorm.weight', lambda w: w)},
          'mlp': {
              'gate': {'kernel': stack('mlp.gate_proj.weight', lambda w: w.T)},
              'up': {'kernel': stack('mlp.up_proj.weight', lambda w: w.T)},
              'down': {'kernel': stack('mlp.down_proj.weight', lambda w: w.T)},
          },
      },
      'final_norm': {'scale': get('model.norm.weight')},
      'lm_head': {'kernel': head_padded},
  }
  return params if scans_layers(config) else unstack_layers(params)


def toto_shapes(config) -> dict[str, tuple[int, ...]]:
  """Plain Toto param shapes keyed by '/'-joined path (llama arch), layers stacked (the
  ``scan_layers`` layout; :func:`toto_jax.model.unstack_layers` gives the other)."""
  config = _model_config(config)
  d, h, kvh, hd, m, n_layers, v = _dims(config)
  vpad = padded_vocab_size(v)
  L = n_layers
  return {
      'embed': (vpad, d),
      'layers/attn_norm/scale': (L, d),
      'layers/attn/query/kernel': (L, d, h, hd),
      'layers/attn/key/kernel': (L, d, kvh, hd),
      'layers/attn/value/kernel': (L, d, kvh, hd),
      'layers/attn/out/kernel': (L, h, hd, d),
      'layers/mlp_norm/scale': (L, d),
      'layers/mlp/gate/kernel': (L, d, m),
      'layers/mlp/up/kernel': (L, d, m),
      'layers/mlp/down/kernel': (L, m, d),
      'final_norm/scale': (d,),
      'lm_head/kernel': (d, vpad),
  }


def params_to_hf(params, config) -> dict[str, np.ndarray]:
  """``LlamaForCausalLM`` state dict (float32 NumPy, vocabulary un-padded) from Toto params.

  ``params`` may be boxed (``nn.Partitioned``, as from ``model.init``) or plain, a dict or a
  FrozenDict, optionally wrapped as ``{'params': ...}``, its layers in either layout
  (``model.scan_layers``). With ``config.tie_word_embeddings`` the
  ``lm_head.weight`` key is omitted (HF re-ties it on load); that requires the output head to equal
  the embedding, else ValueError.
  """
  config = _model_config(config)
  _check_llama(config, 'params_to_hf')
  params = plain_params(params)
  if 'layers' in params:  # either layout (model.scan_layers) -> the stacked one
    params = stack_layers(params)
  flat = {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(dict(params)).items()}
  expected = toto_shapes(config)
  _check_present_with_shapes(flat, expected, 'params_to_hf', 'param')
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise ValueError(f'params_to_hf: unexpected param(s) {extra}')

  d, h, kvh, hd, m, n_layers, v = _dims(config)

  def get(key):
    return np.asarray(jax.device_get(flat[key])).astype(np.float32)

  def out(x):
    return np.ascontiguousarray(x, dtype=np.float32)

  embed = get('embed')[:v]
  lm_head = get('lm_head/kernel')[:, :v].T
  sd = {'model.embed_tokens.weight': out(embed)}
  layers = {k: get(k) for k in expected if k.startswith('layers/')}
  for i in range(n_layers):
    p = f'model.layers.{i}.'
    sd[p + 'input_layernorm.weight'] = out(layers['layers/attn_norm/scale'][i])
    sd[p + 'self_attn.q_proj.weight'] = out(
        layers['layers/attn/query/kernel'][i].reshape(d, h * hd).T)
    sd[p + 'self_attn.k_proj.weight'] = out(
        layers['layers/attn/key/kernel'][i].reshape(d, kvh * hd).T)
    sd[p + 'self_attn.v_proj.weight'] = out(
        layers['layers/attn/value/kernel'][i].reshape(d, kvh * hd).T)
    sd[p + 'self_attn.o_proj.weight'] = out(
        layers['layers/attn/out/kernel'][i].reshape(h * hd, d).T)
    sd[p + 'post_attention_layernorm.weight'] = out(layers['layers/mlp_norm/scale'][i])
    sd[p + 'mlp.gate_proj.weight'] = out(layers['layers/mlp/gate/kernel'][i].T)
    sd[p + 'mlp.up_proj.weight'] = out(layers['layers/mlp/up/kernel'][i].T)
    sd[p + 'mlp.down_proj.weight'] = out(layers['layers/mlp/down/kernel'][i].T)
  sd['model.norm.weight'] = out(get('final_norm/scale'))
  if _tied(config):
    if not np.array_equal(lm_head, embed):
      raise ValueError('params_to_hf: tie_word_embeddings=True but the lm_head kernel differs from '
                       'the embedding; set config.tie_word_embeddings=False to export both')
  else:
    sd['lm_head.weight'] = out(lm_head)
  return sd
