"""Image reading for the tokenizers: files in a directory tree, or a local TFDS split.

Every image comes out as uint8 RGB ``[R, R, 3]``: short side resized to ``R`` and an ``R x R``
crop (centre or random), with the same geometry code as the video reader
(:func:`tokenizers_jax.video.resize_short_side` and :func:`~tokenizers_jax.video.crop_square`).
Grayscale and alpha images become 3-channel RGB. A file that cannot be read raises
:class:`ImageError` (a ``ValueError`` carrying ``.path``), so a job can skip it and go on.

TFDS splits are read with ``tfds.data_source`` (random access over ``array_record`` files, no
TensorFlow needed) and never downloaded: the dataset must already be prepared under ``data_dir``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from tokenizers_jax.video import InputError, crop_square, list_files, resize_short_side

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


class ImageError(InputError):
  """An image that cannot be used (missing, unreadable or undecodable)."""
  kind = 'image'


def list_images(root: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """Sorted image files under ``root`` (recursive, case-insensitive extensions, hidden skipped).

  A root that is itself an image file is returned as a one-element list.
  """
  return list_files(root, extensions, 'image')


def to_rgb_uint8(image: np.ndarray, where: str) -> np.ndarray:
  """``[H, W]``, ``[H, W, 1|3|4]`` uint8/uint16 RGB(A) or gray -> uint8 ``[H, W, 3]`` RGB.

  Alpha is dropped; 16-bit values are scaled down. ``where`` names the source in errors.
  """
  image = np.asarray(image)
  if image.dtype == np.uint16:
    image = (image >> 8).astype(np.uint8)
  elif image.dtype == np.bool_:
    image = image.astype(np.uint8) * 255
  elif image.dtype != np.uint8:
    raise ImageError(where, f'unsupported pixel type {image.dtype} (expected uint8 or uint16)')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or min(image.shape[:2]) < 1:
    raise ImageError(where, f'unsupported image shape {image.shape}')
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def square(image: np.ndarray, resolution: int, crop: str = 'center',
           rng: np.random.Generator | None = None) -> np.ndarray:
  """Short side -> ``resolution``, then a ``resolution`` square crop; returns a contiguous copy."""
  return np.ascontiguousarray(crop_square(resize_short_side(image, resolution), resolution,
                                          mode=crop, rng=rng))


def read_image(path: str, *, resolution: int, crop: str = 'center',
               rng: np.random.Generator | None = None) -> np.ndarray:
  """Reads an image file as uint8 RGB ``[resolution, resolution, 3]``.

  Decoded by OpenCV from the file's bytes (``cv2.imdecode``, the decoder ``cv2.imread`` uses;
  reading the bytes ourselves tells a missing file from an undecodable one and works for any
  path). Gray, alpha and 16-bit images are converted; EXIF orientation is applied.
  """
  path = os.fspath(path)
  if resolution < 1:
    raise ValueError(f'resolution must be >= 1, got {resolution}')
  try:
    data = np.fromfile(path, dtype=np.uint8)
  except FileNotFoundError as e:
    raise ImageError(path, 'does not exist') from e
  except OSError as e:
    raise ImageError(path, f'cannot be read ({e.strerror or e})') from e
  if data.size == 0:
    raise ImageError(path, 'is empty (0 bytes)')
  try:
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
  except cv2.error as e:
    raise ImageError(path, f'cannot be decoded ({e})') from e
  if bgr is None:
    raise ImageError(path, 'cannot be decoded (corrupt or unsupported format)')
  return square(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), resolution, crop, rng)


def parse_input_spec(spec: str) -> tuple[str, ...]:
  """``'tfds:NAME/SPLIT'`` -> ``('tfds', NAME, SPLIT)``; anything else -> ``('dir', path)``.

  NAME may carry a config and version (``'tfds:imagenet2012/validation[:1%]'``,
  ``'tfds:my_set/cfg:1.0.0/train'``): the split is what follows the last '/'. A directory may
  also be written ``'dir:PATH'``.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f'input spec must be a non-empty string, got {spec!r}')
  spec = spec.strip()
  if spec.startswith('tfds:'):
    body = spec[len('tfds:'):]
    name, sep, split = body.rpartition('/')
    if not sep or not name or not split:
      raise ValueError(f"input spec {spec!r}: expected 'tfds:NAME/SPLIT', e.g. 'tfds:mnist/train'")
    return ('tfds', name, split)
  if spec.startswith('dir:'):
    spec = spec[len('dir:'):]
    if not spec:
      raise ValueError("input spec 'dir:': the directory is missing")
  return ('dir', spec)


class TfdsImages:
  """Random-access images of a local TFDS split: ``ds[i] -> (uint8 [R, R, 3], label or -1)``.

  ``image_key`` and ``label_key`` name the features (``label_key=None`` or a record without it
  gives -1). ``crop='random'`` draws item ``i``'s crop from ``(seed, i)``, so it is reproducible
  whatever the access order. The split must be prepared in ``array_record`` (or parquet) format
  under ``data_dir`` (default: TFDS's ``~/tensorflow_datasets``); nothing is downloaded.
  """

  def __init__(self, name: str, split: str, *, resolution: int, data_dir: str | None = None,
               image_key: str = 'image', label_key: str | None = 'label', crop: str = 'center',
               seed: int = 0):
    import tensorflow_datasets as tfds  # slow import (~1 s): only when a TFDS input is used

    if resolution < 1:
      raise ValueError(f'resolution must be >= 1, got {resolution}')
    if crop not in ('center', 'random'):
      raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    self.name, self.split, self.data_dir = name, split, data_dir
    self.resolution, self.crop, self.seed = resolution, crop, seed
    self.image_key, self.label_key = image_key, label_key
    where = f"TFDS dataset '{name}' split '{split}' (data_dir={data_dir or 'TFDS default'})"
    self._where = where
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise FileNotFoundError(f'{where}: not found (no such registered dataset and no prepared '
                              f'copy under data_dir)') from e
    if not builder.is_prepared():
      raise FileNotFoundError(f'{where}: not prepared under {builder.data_dir!s} (prepare it '
                              f"offline with file_format='array_record'; nothing is downloaded)")
    try:
      self._source = builder.as_data_source(split=split)
    except NotImplementedError as e:
      raise ValueError(f"{where}: stored as {builder.info.file_format}, which has no random "
                       f"access; re-prepare it with file_format='array_record'") from e
    except (ValueError, KeyError) as e:
      raise ValueError(f'{where}: bad split ({e})') from e
    features = builder.info.features
    keys = list(features.keys()) if hasattr(features, 'keys') else []
    if image_key not in keys:
      raise KeyError(f"{where}: no image feature {image_key!r}; features are {keys}")
    if label_key is not None and label_key not in keys:
      raise KeyError(f"{where}: no label feature {label_key!r}; features are {keys} "
                     f"(pass label_key=None for unlabelled data)")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    n = len(self)
    if not -n <= index < n:
      raise IndexError(f'{self._where}: index {index} out of range for {n} records')
    index = int(index) % n
    record: dict[str, Any] = self._source[index]
    item = f'{self._where} record {index}'
    image = to_rgb_uint8(record[self.image_key], item)
    rng = np.random.default_rng([self.seed, index]) if self.crop == 'random' else None
    label = -1
    if self.label_key is not None and self.label_key in record:
      label = int(np.asarray(record[self.label_key]))
    return square(image, self.resolution, self.crop, rng), label

  def __repr__(self) -> str:
    return f'TfdsImages({self._where}, {len(self)} records, resolution={self.resolution})'
