"""Sampling from Toto: token-level sampling with a key/value cache, and frame-level generation.

* :func:`sample` continues token prompts ``[B, P]`` by ``N`` tokens. With ``use_cache=True`` it
  prefills a decode cache (:func:`toto_jax.model.init_cache`) with the prompt, then feeds one token
  per step; with ``use_cache=False`` every step recomputes the whole context (a fixed
  ``[B, P + N - 1]`` buffer, so it compiles once): the baseline the cache is measured against
  (``python -m launch.bench decode``). Both draw step ``t``'s token with the key
  ``fold_in(rng, t)``, so they agree token for token up to float rounding.
* :func:`filter_top_k`, :func:`filter_top_p` and :func:`sample_logits` are the pure filtering and
  drawing functions (temperature 0 = greedy).
* :func:`generate_frames` prompts with given frames (codebook codes) and generates any number of
  frames: while the context has room it keeps decoding; once it is full it drops the oldest frame,
  re-prefills a fresh cache with ``[video start] + the kept frames`` (positions restart at 0) and
  generates the next frame, as the thesis does for 64-frame generation (seed 000, section 4.4).

Generated tokens inside a frame are always codebook ids: the reserved ids (pad, markers) and the
padding rows of the vocabulary are never drawn. Step functions are jitted once per config and shape
(the sampling setting is an argument, not a constant). Sampling always runs the layers unrolled
(``model.scan_layers = False``, parameters converted once per call by
:func:`toto_jax.model.unstack_layers`): under ``nn.scan`` every one-token step copied each layer's
weights out of the stacked arrays, and ``base`` decoded 2.2x slower on 2 CPU cores.
"""

from __future__ import annotations

import copy
import json
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from toto_jax import data as token_data
from toto_jax.model import (Toto, cache_length, init_cache, padded_vocab_size, plain_params,
                            scans_layers, unstack_layers)

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Filtering and drawing (pure functions)
# ---------------------------------------------------------------------------------------------

def filter_top_k(logits: Array, k: int | Array) -> Array:
  """Keeps the ``k`` largest logits of the last axis (ties with the k-th are kept too) and sets
  the rest to ``-inf``; ``k <= 0`` or ``k >= V`` keeps everything. ``k`` may be traced."""
  v = logits.shape[-1]
  k = jnp.asarray(k, jnp.int32)
  sorted_logits = jnp.sort(logits, axis=-1)
  kth = jnp.take(sorted_logits, jnp.clip(v - k, 0, v - 1), axis=-1)[..., None]
  keep = (k <= 0) | (k >= v) | (logits >= kth)
  return jnp.where(keep, logits, -jnp.inf)


def filter_top_p(logits: Array, p: float | Array) -> Array:
  """Nucleus filtering: keeps the smallest set of largest logits whose softmax mass reaches ``p``
  (always at least the most likely one) and sets the rest to ``-inf``; ``p >= 1`` keeps all.
  ``p`` may be traced."""
  p = jnp.asarray(p, jnp.float32)
  sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  n_keep = jnp.maximum(jnp.sum(mass_before < p, axis=-1, keepdims=True), 1)
  threshold = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
  return jnp.where((p >= 1.0) | (logits >= threshold), logits, -jnp.inf)


def restrict_ids(logits: Array, lo: int, hi: int) -> Array:
  """Sets the logits of ids outside ``[lo, hi)`` to ``-inf`` (reserved ids, vocabulary padding)."""
  ids = jnp.arange(logits.shape[-1])
  return jnp.where((ids >= lo) & (ids < hi), logits, -jnp.inf)


def check_settings(temperature: float, top_k: int, top_p: float) -> None:
  """Raises ValueError naming the sampling argument that is out of range."""
  if not temperature >= 0:
    raise ValueError(f'temperature must be >= 0 (0 = greedy), got {temperature}')
  if int(top_k) != top_k or top_k < 0:
    raise ValueError(f'top_k must be an integer >= 0 (0 = off), got {top_k}')
  if not 0 < top_p <= 1:
    raise ValueError(f'top_p must be in (0, 1] (1 = off), got {top_p}')


def sample_logits(logits: Array, rng: Array, *, temperature: float | Array = 1.0,
                  top_k: int | Array = 0, top_p: float | Array = 1.0) -> Array:
  """Draws int32 ids ``[...]`` from float logits ``[..., V]``: temperature, then top-k, then
  top-p; ``temperature == 0`` takes the argmax (greedy). The settings may be traced, so one
  compiled function serves every setting."""
  logits = logits.astype(jnp.float32)
  temperature = jnp.asarray(temperature, jnp.float32)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
  drawn = jax.random.categorical(rng, filter_top_p(filter_top_k(scaled, top_k), top_p), axis=-1)
  return jnp.where(temperature > 0, drawn.astype(jnp.int32), greedy)


# ---------------------------------------------------------------------------------------------
# Jitted step functions, built once per config
# ---------------------------------------------------------------------------------------------

def _config_key(cfg: Any) -> str:
  if hasattr(cfg, 'to_dict'):
    return json.dumps(cfg.to_dict(), sort_keys=True, default=str)
  return repr(sorted(vars(cfg).items()))


_STEP_FNS: dict[tuple, dict[str, Callable]] = {}


def _step_fns(cfg: Any, cache_len: int, lo: int, hi: int) -> dict[str, Callable]:
  """``prefill``, ``step`` (cached) and ``recompute`` (uncached) for one config and id range;
  the sampling setting ``(temperature, top_k, top_p)`` is an argument, not a constant."""
  key = (_config_key(cfg), cache_len, lo, hi)
  if key in _STEP_FNS:
    return _STEP_FNS[key]
  decoder = Toto(cfg, decode=True, cache_len=cache_len)
  full = Toto(cfg)

  def draw(logits, rng, t, setting):
    logits = restrict_ids(logits.astype(jnp.float32), lo, hi)
    temperature, top_k, top_p = setting
    return sample_logits(logits, jax.random.fold_in(rng, t), temperature=temperature,
                         top_k=top_k, top_p=top_p)

  def prefill(params, cache, prompt, rng, setting):
    logits, updated = decoder.apply({'params': params, 'cache': cache}, prompt, mutable=['cache'])
    return draw(logits[:, -1], rng, 0, setting), updated['cache']

  def step(params, cache, token, rng, t, setting):
    logits, updated = decoder.apply({'params': params, 'cache': cache}, token[:, None],
                                    mutable=['cache'])
    return draw(logits[:, 0], rng, t, setting), updated['cache']

  def recompute(params, seq, t, rng, setting, n_prompt):
    """Token ``n_prompt + t`` from the full buffer ``seq`` (positions after it are ignored by
    causality); it is written into ``seq`` when it still lies inside the buffer."""
    logits = full.apply({'params': params}, seq)
    pos = n_prompt + t
    token = draw(jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1, keepdims=False), rng, t,
                 setting)
    seq = jnp.where(jnp.arange(seq.shape[1])[None, :] == pos, token[:, None], seq)
    return token, seq

  fns = {'prefill': jax.jit(prefill, donate_argnums=(1,)),
         'step': jax.jit(step, donate_argnums=(1,)),
         'recompute': jax.jit(recompute, donate_argnums=(1,), static_argnums=(5,))}
  _STEP_FNS[key] = fns
  return fns


# ---------------------------------------------------------------------------------------------
# Token-level sampling
# ---------------------------------------------------------------------------------------------

def _unrolled(model_cfg: Any, params: Any) -> tuple[Any, Any]:
  """The config and parameters the sampler runs: layers unrolled, parameters on the devices."""
  params = jax.device_put(unstack_layers(plain_params(params)))
  if not scans_layers(model_cfg):
    return model_cfg, params
  if hasattr(model_cfg, 'unlocked'):  # ml_collections.ConfigDict
    cfg = copy.deepcopy(model_cfg)
    with cfg.unlocked():
      cfg.scan_layers = False
    return cfg, params
  return types.SimpleNamespace(**{**vars(model_cfg), 'scan_layers': False}), params


def _sample(model_cfg, params, prompt, num_new_tokens: int, *, rng: Array, temperature: float,
            top_k: int, top_p: float, use_cache: bool, id_range: tuple[int, int],
            progress: tqdm | None = None) -> np.ndarray:
  """:func:`sample` with the allowed id range and an optional progress bar to advance;
  ``model_cfg`` and ``params`` as :func:`_unrolled` returns them."""
  prompt = np.asarray(prompt)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f'sample: prompt must be int ids [batch, length >= 1], got {prompt.shape}')
  if num_new_tokens < 0:
    raise ValueError(f'sample: num_new_tokens must be >= 0, got {num_new_tokens}')
  b, p = prompt.shape
  if num_new_tokens == 0:
    return prompt.astype(np.int32)
  needed = p + num_new_tokens - 1  # the last new token is never fed back
  if needed > model_cfg.max_len:
    raise ValueError(f'sample: a prompt of {p} tokens + {num_new_tokens} new tokens needs '
                     f'{needed} positions, more than model.max_len ({model_cfg.max_len}); '
                     f'use generate_frames to slide the context window')
  lo, hi = id_range
  if not 0 <= lo < hi <= padded_vocab_size(model_cfg.vocab_size):
    raise ValueError(f'sample: allowed ids [{lo}, {hi}) are empty or outside the vocabulary')
  check_settings(temperature, top_k, top_p)
  setting = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
  fns = _step_fns(model_cfg, cache_length(model_cfg), lo, hi)
  prompt_dev = jnp.asarray(prompt, jnp.int32)
  tokens = []
  if use_cache:
    cache = init_cache(model_cfg, b)
    token, cache = fns['prefill'](params, cache, prompt_dev, rng, setting)
    tokens.append(token)
    for t in range(1, num_new_tokens):
      if progress is not None:
        progress.update(1)
      token, cache = fns['step'](params, cache, token, rng, jnp.int32(t), setting)
      tokens.append(token)
  else:
    seq = jnp.concatenate([prompt_dev, jnp.zeros((b, num_new_tokens - 1), jnp.int32)], axis=1)
    for t in range(num_new_tokens):
      if progress is not None and t:
        progress.update(1)
      token, seq = fns['recompute'](params, seq, jnp.int32(t), rng, setting, p)
      tokens.append(token)
  if progress is not None:
    progress.update(1)
  new = np.asarray(jnp.stack(tokens, axis=1))
  return np.concatenate([prompt.astype(np.int32), new], axis=1)


def sample(model_cfg, params, prompt, num_new_tokens, *, rng, temperature=1.0, top_k=0,
           top_p=1.0, use_cache=True) -> np.ndarray:
  """Continues int token ``prompt`` ``[B, P]`` by ``num_new_tokens``; returns int32
  ``[B, P + num_new_tokens]`` (the prompt first).

  Only codebook ids (``NUM_RESERVED .. model.vocab_size - 1``) are drawn. ``use_cache=False``
  recomputes the full context every step (same tokens, slower). ``P + num_new_tokens - 1`` must fit
  in ``model.max_len``; :func:`generate_frames` slides the window beyond it.
  """
  model_cfg, params = _unrolled(model_cfg, params)
  return _sample(model_cfg, params, prompt, int(num_new_tokens), rng=rng,
                 temperature=temperature, top_k=top_k, top_p=top_p, use_cache=use_cache,
                 id_range=(token_data.NUM_RESERVED, int(model_cfg.vocab_size)))


# ---------------------------------------------------------------------------------------------
# Frame-level generation with a sliding window
# ---------------------------------------------------------------------------------------------

def max_context_frames(model_cfg, frame_tokens: int) -> int:
  """Frames a window may hold: the start marker and ``F`` frames need ``F * frame_tokens`` input
  positions (the last token is never fed), so ``F = max_len // frame_tokens``."""
  return int(model_cfg.max_len) // int(frame_tokens)


def generate_frames(model_cfg, params, prompt_frames, num_frames: int, *, frame_tokens: int,
                    context_frames: int | None = None, rng: Array, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, use_cache: bool = True,
                    codebook_size: int | None = None, progress: bool = True) -> np.ndarray:
  """Prompts with ``prompt_frames`` (codes ``[B, F, frame_tokens]``, ``F >= 0``) and generates
  ``num_frames`` more; returns codes ``[B, F + num_frames, frame_tokens]``.

  The window is ``[video start] + up to context_frames frames`` (default: what fits in
  ``model.max_len``). While it has room, decoding continues from the prompt in one pass; then each
  further frame drops the oldest one, re-prefills a fresh cache from the ``context_frames - 1`` kept
  frames (positions from 0) and decodes ``frame_tokens`` tokens. Codes are drawn from
  ``[0, codebook_size)`` (default: every code the vocabulary holds).
  """
  prompt_frames = np.asarray(prompt_frames)
  if prompt_frames.ndim != 3 or prompt_frames.shape[2] != frame_tokens:
    raise ValueError(f'generate_frames: prompt_frames must be codes [batch, frames, '
                     f'{frame_tokens}], got {prompt_frames.shape}')
  if num_frames < 0:
    raise ValueError(f'generate_frames: num_frames must be >= 0, got {num_frames}')
  most = max_context_frames(model_cfg, frame_tokens)
  window = most if context_frames is None else int(context_frames)
  if not 1 <= window <= most:
    raise ValueError(f'generate_frames: context_frames must be in [1, {most}] (model.max_len '
                     f'{model_cfg.max_len} // {frame_tokens} tokens per frame), got {window}')
  num_codes = int(model_cfg.vocab_size) - token_data.NUM_RESERVED
  if codebook_size is not None:
    if not 0 < codebook_size <= num_codes:
      raise ValueError(f'generate_frames: codebook_size must be in [1, {num_codes}] (model.'
                       f'vocab_size - {token_data.NUM_RESERVED}), got {codebook_size}')
    num_codes = int(codebook_size)
  if prompt_frames.size and (prompt_frames.min() < 0 or prompt_frames.max() >= num_codes):
    raise ValueError(f'generate_frames: prompt codes must lie in [0, {num_codes}), got '
                     f'[{prompt_frames.min()}, {prompt_frames.max()}]')
  id_range = (token_data.NUM_RESERVED, token_data.NUM_RESERVED + num_codes)
  b = prompt_frames.shape[0]
  frames = prompt_frames.astype(np.int32)
  model_cfg, params = _unrolled(model_cfg, params)
  start = np.full((b, 1), token_data.VIDEO_START, np.int32)
  bar = tqdm(total=num_frames * frame_tokens, unit='tok', desc='generate', disable=not progress)
  remaining, call = num_frames, 0
  try:
    while remaining:
      kept = frames if frames.shape[1] < window else frames[:, frames.shape[1] - (window - 1):]
      n = min(remaining, window - kept.shape[1])
      prompt = np.concatenate([start, kept.reshape(b, -1) + token_data.NUM_RESERVED], axis=1)
      out = _sample(model_cfg, params, prompt, n * frame_tokens, rng=jax.random.fold_in(rng, call),
                    temperature=temperature, top_k=top_k, top_p=top_p, use_cache=use_cache,
                    id_range=id_range, progress=bar)
      new = out[:, prompt.shape[1]:].reshape(b, n, frame_tokens) - token_data.NUM_RESERVED
      frames = np.concatenate([frames, new], axis=1)
      remaining -= n
      call += 1
  finally:
    bar.close()
  return frames
