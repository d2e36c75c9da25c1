"""Video and image readers (tokenizers_jax.video, .images) on small files written by the tests."""

from __future__ import annotations

import os
import pickle

import cv2
import numpy as np
import pytest

from tokenizers_jax import images as I
from tokenizers_jax import video as V

T, H, W = 40, 48, 64


def _pattern(frames: int = T, h: int = H, w: int = W) -> np.ndarray:
  """Frame i: red = 6 i everywhere (which frame), green = 4 x, blue = 5 y (where in the frame)."""
  y, x = np.mgrid[0:h, 0:w]
  out = np.zeros((frames, h, w, 3), np.uint8)
  out[..., 0] = (np.arange(frames) * 6)[:, None, None]
  out[..., 1] = x * 4
  out[..., 2] = y * 5
  return out


@pytest.fixture(scope='module')
def mp4(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp('videos') / 'pattern.mp4')
  assert V.write_video(path, _pattern(), fps=8) == path
  return path


def _frame_ids(clip: np.ndarray) -> list[float]:
  return [float(f[..., 0].mean()) / 6 for f in clip]


def test_write_and_probe(mp4, tmp_path):
  info = V.probe_video(mp4)
  assert (info.frames, info.height, info.width, info.fps) == (T, H, W, 8.0)
  assert info.duration_s == pytest.approx(5.0) and info.header_frames == T
  assert V.probe_video(mp4, exact=False).frames == T
  assert not [n for n in os.listdir(os.path.dirname(mp4)) if n.startswith('.')]  # no tmp left
  with pytest.raises(ValueError, match='even'):
    V.write_video(str(tmp_path / 'odd.mp4'), np.zeros((2, 5, 6, 3), np.uint8), 8)
  with pytest.raises(V.VideoError, match='directory does not exist'):
    V.write_video(str(tmp_path / 'nodir' / 'x.mp4'), np.zeros((2, 8, 8, 3), np.uint8), 8)


def test_read_clips_stride_and_windows(mp4):
  # Windows of 4 x 4 = 16 source frames; a clip needs 13: frames 0-12 and 16-28 make two clips,
  # the partial window at 32-39 is dropped.
  clips = list(V.read_clips(mp4, frames=4, stride=4, resolution=48))
  assert len(clips) == 2
  for k, clip in enumerate(clips):
    assert clip.shape == (4, 48, 48, 3) and clip.dtype == np.uint8
    np.testing.assert_allclose(_frame_ids(clip), [16 * k + 4 * j for j in range(4)], atol=0.8)
  clips = list(V.read_clips(mp4, frames=5, stride=2, resolution=24))
  assert len(clips) == 4 and clips[0].shape == (5, 24, 24, 3)
  np.testing.assert_allclose(_frame_ids(clips[3]), [30, 32, 34, 36, 38], atol=0.8)
  assert len(list(V.read_clips(mp4, frames=4, stride=4, resolution=48, max_clips=1))) == 1
  first = next(iter(V.read_clips(mp4, frames=4, stride=4, resolution=48)))
  np.testing.assert_array_equal(V.read_clip(mp4, frames=4, stride=4, resolution=48), first)
  with pytest.raises(ValueError, match='crop'):
    V.read_clips(mp4, frames=4, resolution=48, crop='middle')


def _x_offset(clip: np.ndarray) -> float:
  # Green is 4 x in the source frame: the crop's left column sits at x0.
  return float((clip[..., 1].astype(np.float64) - 4 * np.arange(48)).mean()) / 4


def test_center_and_random_crop(mp4):
  centre = V.read_clip(mp4, frames=4, stride=4, resolution=48)
  assert _x_offset(centre) == pytest.approx(8, abs=1)  # (64 - 48) // 2
  rng = np.random.default_rng(3)
  clips = list(V.read_clips(mp4, frames=4, stride=4, resolution=48, crop='random', rng=rng))
  replay = np.random.default_rng(3)
  for clip in clips:
    y0, x0 = V.crop_offset(48, 64, 48, 'random', replay)
    assert y0 == 0
    assert _x_offset(clip) == pytest.approx(x0, abs=1)
    per_frame = [(f[..., 1].astype(float) - 4 * np.arange(48)).mean() / 4 for f in clip]
    assert np.ptp(per_frame) < 1  # one offset per clip
  # Short side 24: the frame becomes 24 x 32 and the crop covers source columns 8..55.
  small = V.read_clip(mp4, frames=2, stride=1, resolution=24)
  assert small.shape == (2, 24, 24, 3)
  assert float(small[:, :, 0, 1].mean()) / 4 == pytest.approx(9, abs=1.5)


def test_geometry_helpers():
  portrait = np.zeros((100, 50, 3), np.uint8)
  assert V.resize_short_side(portrait, 20).shape == (40, 20, 3)
  assert V.resize_short_side(portrait, 200).shape == (400, 200, 3)
  assert V.resize_short_side(np.zeros((30, 90), np.uint8), 10).shape == (10, 30)
  assert V.resize_short_side(np.zeros((30, 90, 1), np.uint8), 10).shape == (10, 30, 1)
  img = np.arange(6 * 10).reshape(6, 10)
  np.testing.assert_array_equal(V.crop_square(img, 4), img[1:5, 3:7])
  np.testing.assert_array_equal(V.crop_square(img, 4, offset=(9, -3)), img[2:6, 0:4])  # clamped
  offsets = {V.crop_offset(6, 10, 4, 'random', np.random.default_rng(s)) for s in range(30)}
  assert len(offsets) > 3 and all(0 <= y <= 2 and 0 <= x <= 6 for y, x in offsets)
  with pytest.raises(ValueError, match='cannot crop'):
    V.crop_square(img, 7)


def test_short_video_pad_and_skip(tmp_path):
  path = str(tmp_path / 'short.mp4')
  V.write_video(path, _pattern(10), fps=8)
  clips = list(V.read_clips(path, frames=8, stride=4, resolution=48))  # needs 29 frames
  assert len(clips) == 1
  np.testing.assert_allclose(_frame_ids(clips[0]), [0, 4, 8, 8, 8, 8, 8, 8], atol=0.8)
  with pytest.raises(V.VideoError, match='has 10 frames, needs 29 for 8 frames at stride 4') as e:
    list(V.read_clips(path, frames=8, stride=4, resolution=48, short='skip'))
  assert e.value.path == path


def test_bad_files_raise_video_error(mp4, tmp_path):
  data = open(mp4, 'rb').read()
  cases = {
      'empty.mp4': b'',
      'garbage.mp4': np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes(),
      'half.mp4': data[:len(data) // 2],  # mp4v from OpenCV keeps its index (moov) at the end
  }
  for name, content in cases.items():
    (tmp_path / name).write_bytes(content)
  cases['missing.mp4'] = None
  (tmp_path / 'folder.mp4').mkdir()
  cases['folder.mp4'] = None
  for name in cases:
    path = str(tmp_path / name)
    with pytest.raises(V.VideoError) as e:
      list(V.read_clips(path, frames=2, resolution=16))
    assert e.value.path == path and repr(path) in str(e.value)
    with pytest.raises(V.VideoError):
      V.probe_video(path)
  with pytest.raises(V.VideoError, match='cannot be opened') as e:
    V.read_clip(str(tmp_path / 'garbage.mp4'), frames=2, resolution=16)
  copy = pickle.loads(pickle.dumps(e.value))  # crosses process boundaries intact
  assert (type(copy), copy.path, str(copy)) == (V.VideoError, e.value.path, str(e.value))
  os.mkfifo(tmp_path / 'pipe.mp4')  # must not block waiting for a writer
  with pytest.raises(V.VideoError, match='not a regular file'):
    V.probe_video(str(tmp_path / 'pipe.mp4'))


def test_truncated_avi_gives_fewer_frames_or_error(tmp_path):
  # An AVI cut in half still opens (its header claims all frames): the decodable part is read.
  path = str(tmp_path / 'full.avi')
  writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*'MJPG'), 8, (W, H))
  assert writer.isOpened()
  for frame in _pattern():
    writer.write(np.ascontiguousarray(frame[..., ::-1]))
  writer.release()
  cut = tmp_path / 'cut.avi'
  data = open(path, 'rb').read()
  cut.write_bytes(data[:len(data) // 2])
  try:
    info = V.probe_video(str(cut))
  except V.VideoError:
    return
  assert 0 < info.frames < T and info.header_frames in (-1, T)
  clips = list(V.read_clips(str(cut), frames=2, stride=2, resolution=16))
  assert 0 < len(clips) <= info.frames // 2 + 1


def test_list_videos(tmp_path):
  for rel in ('b/clip.MP4', 'a/x.webm', 'a/deep/y.mov', 'a/notes.txt', '.hidden/z.mp4',
              'a/.x.mp4.123-ab.tmp.mp4'):
    p = tmp_path / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b'')
  got = [os.path.relpath(p, tmp_path) for p in V.list_videos(str(tmp_path))]
  assert got == ['a/deep/y.mov', 'a/x.webm', 'b/clip.MP4']
  with pytest.raises(FileNotFoundError, match='nowhere'):
    V.list_videos(str(tmp_path / 'nowhere'))


def test_write_gif(tmp_path):
  from PIL import Image
  path = str(tmp_path / 'anim.gif')
  V.write_gif(path, _pattern(6, 16, 20), fps=5)
  with Image.open(path) as im:
    assert im.format == 'GIF' and im.size == (20, 16) and im.n_frames == 6
    assert im.info['duration'] == 200


# ------------------------------------------------------------------------------------ images


def test_read_image_formats(tmp_path):
  rgb = _pattern(1, 30, 40)[0]
  for ext in ('png', 'jpg', 'bmp'):
    path = str(tmp_path / f'img.{ext}')
    assert cv2.imwrite(path, rgb[..., ::-1])
    out = I.read_image(path, resolution=20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    # Short side 30 -> 20, width 40 -> 27, centre crop: green (4 x) is about 4 * 1.5 * (3 + j).
    assert float(out[..., 0].mean()) < 12  # red is 0: channel order is RGB
    assert float(out[:, 10, 1].mean()) == pytest.approx(4 * 1.5 * 13.5, abs=8)
  gray = str(tmp_path / 'gray.png')
  cv2.imwrite(gray, np.full((10, 12), 77, np.uint8))
  out = I.read_image(gray, resolution=8)
  assert out.shape == (8, 8, 3) and (out == 77).all()
  rgba = str(tmp_path / 'alpha.png')
  cv2.imwrite(rgba, np.dstack([np.full((10, 10, 3), (10, 20, 30), np.uint8),
                               np.zeros((10, 10), np.uint8)]))
  out = I.read_image(rgba, resolution=10)
  assert out.shape == (10, 10, 3) and tuple(out[0, 0]) == (30, 20, 10)
  crops = {I.read_image(str(tmp_path / 'img.png'), resolution=20, crop='random',
                        rng=np.random.default_rng(s))[0, 0, 1] for s in range(8)}
  assert len(crops) > 1


def test_bad_images_and_listing(tmp_path):
  (tmp_path / 'sub').mkdir()
  bad = tmp_path / 'sub' / 'bad.JPG'
  bad.write_bytes(b'not a jpeg at all')
  (tmp_path / 'empty.png').write_bytes(b'')
  (tmp_path / 'a.webp').write_bytes(b'')
  (tmp_path / 'readme.md').write_bytes(b'')
  for path, reason in ((bad, 'cannot be decoded'), (tmp_path / 'empty.png', 'empty'),
                       (tmp_path / 'missing.png', 'does not exist')):
    with pytest.raises(I.ImageError, match=reason) as e:
      I.read_image(str(path), resolution=8)
    assert e.value.path == str(path)
    assert str(pickle.loads(pickle.dumps(e.value))) == str(e.value)
  got = [os.path.relpath(p, tmp_path) for p in I.list_images(str(tmp_path))]
  assert got == ['a.webp', 'empty.png', 'sub/bad.JPG']
  with pytest.raises(FileNotFoundError, match='missing_root'):
    I.list_images(str(tmp_path / 'missing_root'))


def test_parse_input_spec():
  assert I.parse_input_spec('tfds:mnist/train') == ('tfds', 'mnist', 'train')
  assert I.parse_input_spec('tfds:imagenet2012/validation[:1%]') == (
      'tfds', 'imagenet2012', 'validation[:1%]')
  assert I.parse_input_spec('tfds:ds/cfg:1.0.0/test') == ('tfds', 'ds/cfg:1.0.0', 'test')
  assert I.parse_input_spec('/data/images') == ('dir', '/data/images')
  assert I.parse_input_spec('dir:rel/path') == ('dir', 'rel/path')
  for bad in ('tfds:mnist', 'tfds:/train', '', 'dir:'):
    with pytest.raises(ValueError):
      I.parse_input_spec(bad)


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory) -> str:
  """A 6-image TFDS dataset 'reader_test_images' (array_record) built without TensorFlow.

  Images are given to TFDS as PNG bytes: encoding numpy arrays would need TensorFlow.
  The builder is not registered, so reading goes through TFDS's files-only path, as for a
  dataset prepared elsewhere.
  """
  tfds = pytest.importorskip('tensorflow_datasets')
  data_dir = str(tmp_path_factory.mktemp('tfds'))

  class ReaderTestImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(num_classes=6)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        img = np.full((12 + i, 16, 3), 40 * i, np.uint8)
        yield i, {'image': cv2.imencode('.png', img)[1].tobytes(), 'label': i}

  builder = ReaderTestImages(data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare()
  return data_dir


def test_tfds_images(tfds_dir):
  ds = I.TfdsImages('reader_test_images', 'train', resolution=8, data_dir=tfds_dir)
  assert len(ds) == 6
  seen = set()
  for i in range(len(ds)):
    image, label = ds[i]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert (image == 40 * label).all()  # label i was drawn with value 40 i
    seen.add(label)
  assert seen == set(range(6))
  with pytest.raises(IndexError):
    ds[6]
  assert len(I.TfdsImages('reader_test_images', 'train[:50%]', resolution=8,
                          data_dir=tfds_dir)) == 3
  unlabelled = I.TfdsImages('reader_test_images', 'train', resolution=4, data_dir=tfds_dir,
                            label_key=None, crop='random', seed=1)
  assert unlabelled[0][1] == -1
  np.testing.assert_array_equal(unlabelled[2][0], unlabelled[2][0])
  with pytest.raises(FileNotFoundError, match=r"no_such_set.*train.*data_dir="):
    I.TfdsImages('no_such_set', 'train', resolution=8, data_dir=tfds_dir)
  with pytest.raises(FileNotFoundError, match='mnist.*not prepared'):  # registered, no files
    I.TfdsImages('mnist', 'train', resolution=8, data_dir=tfds_dir)
  with pytest.raises(ValueError, match='split'):
    I.TfdsImages('reader_test_images', 'test', resolution=8, data_dir=tfds_dir)
  with pytest.raises(KeyError, match='pixels'):
    I.TfdsImages('reader_test_images', 'train', resolution=8, data_dir=tfds_dir,
                 image_key='pixels')
