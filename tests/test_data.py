"""scae_tf.data: IDX reading, locating the files, preprocessing, the resize
cache and the resumable batch stream.

Most tests use small synthetic IDX files in tmp_path and a tiny dataset
registered for the test; the real MNIST files (`SCAE_DATA_DIR`, default
`../shared/data`) are only used to check PIL parity and the real sizes.
Every test runs with the shared dir, the Keras cache and the preprocessing
cache redirected into tmp_path and the download disabled (no network).
"""

import dataclasses
import gzip
import hashlib
import itertools
import os
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import data_path
import scae_tf
from scae_tf import data
from scae_tf.data import locate
from scae_tf.data import preprocessing

TINY = data.DatasetSpec(name='tiny', num_examples=(('train', 50),
                                                   ('test', 13)),
                        num_classes=256)
UNPATCHED_SHARED_DATA_DIR = locate.SHARED_DATA_DIR
REAL_DOWNLOAD = locate.download_files
FILES = ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
         't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']


def write_idx(path, array):
  """Writes uint8 `array` (1-D labels or [N, h, w] images) as gzip IDX."""
  array = np.asarray(array, np.uint8)
  header = struct.pack('>HBB', 0, 8, array.ndim) + struct.pack(
      '>' + 'I' * array.ndim, *array.shape)
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())


def tiny_images(n, seed):
  """Digit-like uint8 [n, 28, 28]: blobs of ink in the middle, 0 border."""
  rng = np.random.RandomState(seed)
  images = np.zeros([n, 28, 28], np.uint8)
  images[:, 4:24, 6:22] = rng.randint(0, 256, size=(n, 20, 16))
  return images


def make_dataset(folder, n_train=50, n_test=13, seed=0):
  """The 4 IDX files in `folder`; labels are 0..N-1, naming each example."""
  folder.mkdir(parents=True, exist_ok=True)
  for split, n, s in (('train', n_train, seed), ('test', n_test, seed + 1)):
    image_file, label_file = data.IDX_FILES[split]
    write_idx(folder / image_file, tiny_images(n, s))
    write_idx(folder / label_file, np.arange(n))
  return folder


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
  """No real locations, no network; registers the `tiny` dataset."""
  monkeypatch.setattr(locate, 'SHARED_DATA_DIR', tmp_path / 'shared')
  monkeypatch.setenv('KERAS_HOME', str(tmp_path / 'keras'))
  monkeypatch.setenv('SCAE_CACHE_DIR', str(tmp_path / 'cache'))
  monkeypatch.delenv('SCAE_DATA_DIR', raising=False)
  downloads = []

  def no_download(spec, target):
    downloads.append((spec.name, target))
    raise OSError('network disabled in tests')

  monkeypatch.setattr(locate, 'download_files', no_download)
  monkeypatch.setitem(data.DATASETS, 'tiny', TINY)
  return downloads


@pytest.fixture
def tiny_dir(tmp_path):
  return make_dataset(tmp_path / 'tiny_data')


# ---------------------------------------------------------------------------
# read_idx / load_split / load_dataset.


def test_read_idx_round_trip(tmp_path):
  images = tiny_images(5, 0)
  write_idx(tmp_path / 'a.gz', images)
  write_idx(tmp_path / 'b', np.arange(7))
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / 'a.gz')), images)
  np.testing.assert_array_equal(data.read_idx(tmp_path / 'b'), np.arange(7))


def test_read_idx_wrong_magic(tmp_path):
  path = tmp_path / 'x.gz'
  with gzip.open(path, 'wb') as f:
    f.write(struct.pack('>HBBI', 0, 0x0D, 1, 3) + b'abc')  # float32 code
  with pytest.raises(data.DataFileError, match='x.gz.*magic'):
    data.read_idx(str(path))


def test_read_idx_truncated_payload(tmp_path):
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  raw = struct.pack('>HBBIII', 0, 8, 3, 4, 28, 28) + bytes(3 * 28 * 28)
  with gzip.open(path, 'wb') as f:
    f.write(raw)
  with pytest.raises(data.DataFileError,
                     match='train-images-idx3-ubyte.gz.*truncated'):
    data.read_idx(str(path))


def test_read_idx_truncated_gzip(tmp_path):
  path = tmp_path / 'cut.gz'
  write_idx(path, tiny_images(20, 0))
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(data.DataFileError, match='cut.gz.*corrupt or truncated'):
    data.read_idx(str(path))


def test_read_idx_missing_file(tmp_path):
  with pytest.raises(data.DataFileError, match='nope.gz: file not found'):
    data.read_idx(str(tmp_path / 'nope.gz'))


def test_load_split_count_mismatch(tmp_path):
  write_idx(tmp_path / FILES[0], tiny_images(5, 0))
  write_idx(tmp_path / FILES[1], np.arange(4))
  with pytest.raises(data.DataFileError,
                     match='train-images.*5 images.*train-labels.*4 labels'):
    data.load_split(str(tmp_path), 'train')


def test_load_split_returns_int64_labels(tiny_dir):
  images, labels = data.load_split(str(tiny_dir), 'test')
  assert images.shape == (13, 28, 28) and images.dtype == np.uint8
  assert labels.dtype == np.int64
  np.testing.assert_array_equal(labels, np.arange(13))


def test_load_dataset_checks_expected_count(tiny_dir):
  # 50 training images are fine for `tiny` but not for MNIST's 60000.
  assert data.load_dataset('tiny', 'train', tiny_dir)[0].shape[0] == 50
  with pytest.raises(data.DataFileError,
                     match=r'train-images-idx3-ubyte.gz: holds 50 images.*'
                     r'mnist train split has 60000'):
    data.load_dataset('mnist', 'train', tiny_dir)


def test_load_dataset_checks_image_size(tiny_dir):
  write_idx(tiny_dir / FILES[2], np.zeros([13, 20, 20]))
  with pytest.raises(data.DataFileError,
                     match='t10k-images-idx3-ubyte.gz: images are 20x20.*28x28'):
    data.load_dataset('tiny', 'test', tiny_dir)


def test_load_dataset_checks_label_range(tiny_dir, monkeypatch):
  ten_classes = data.DatasetSpec(name='tiny', num_examples=TINY.num_examples)
  monkeypatch.setitem(data.DATASETS, 'tiny', ten_classes)  # labels 0..12
  with pytest.raises(data.DataFileError,
                     match='t10k-labels-idx1-ubyte.gz: label 12 out of range'):
    data.load_dataset('tiny', 'test', tiny_dir)


# ---------------------------------------------------------------------------
# Names: datasets, splits, modes.


def test_unknown_dataset_lists_known():
  with pytest.raises(ValueError, match=r"Unknown dataset 'nist'.*'mnist'"):
    data.resolve_data_dir('nist')
  with pytest.raises(ValueError, match='fashion_mnist'):
    data.BatchStream('nist', 'train', 10, 'resize')


@pytest.mark.parametrize('name', ['svhn_cropped', 'cifar10', 'gtsrb'])
def test_fork_datasets_not_implemented(name):
  with pytest.raises(ValueError, match=f"'{name}'.*not implemented"):
    data.load_dataset(name, 'train')


def test_unknown_split(tiny_dir):
  with pytest.raises(ValueError, match=r"Unknown split 'valid'.*'train'"):
    data.load_split(str(tiny_dir), 'valid')
  with pytest.raises(ValueError, match='Unknown split'):
    data.BatchStream('tiny', 'valid', 10, 'resize', data_dir=tiny_dir)


def test_unknown_mode(tiny_dir):
  images = tiny_images(2, 0)
  with pytest.raises(ValueError, match=r"mode 'crop'.*'pad_center', "
                     r"'pad_shift', 'resize'"):
    data.preprocess(images, 'crop')
  with pytest.raises(ValueError, match="mode 'crop'"):
    data.BatchStream('tiny', 'train', 10, 'crop', data_dir=tiny_dir)
  with pytest.raises(ValueError, match="mode 'crop'"):
    next(data.eval_batches('tiny', 'test', 4, 'crop', tiny_dir))


def test_preprocess_rejects_bad_input():
  with pytest.raises(ValueError, match='uint8'):
    data.preprocess(np.zeros([2, 28, 28], np.float32), 'pad_center')
  with pytest.raises(ValueError, match='smaller'):
    data.preprocess(tiny_images(2, 0), 'pad_center', canvas_size=20)
  with pytest.raises(ValueError, match='needs an rng'):
    data.preprocess(tiny_images(2, 0), 'pad_shift')


# ---------------------------------------------------------------------------
# resolve_data_dir.


def test_resolve_explicit_folder_or_parent(tmp_path):
  folder = make_dataset(tmp_path / 'somewhere' / 'tiny')
  assert data.resolve_data_dir('tiny', folder) == str(folder)
  assert data.resolve_data_dir('tiny', str(folder.parent)) == str(folder)


def test_resolve_env_var_folder_or_parent(tmp_path, monkeypatch):
  folder = make_dataset(tmp_path / 'env' / 'tiny')
  monkeypatch.setenv('SCAE_DATA_DIR', str(folder))
  assert data.resolve_data_dir('tiny') == str(folder)
  monkeypatch.setenv('SCAE_DATA_DIR', str(folder.parent))
  assert data.resolve_data_dir('tiny') == str(folder)


def test_resolve_order(tmp_path, monkeypatch, caplog):
  explicit = make_dataset(tmp_path / 'explicit')
  env = make_dataset(tmp_path / 'env')
  shared = make_dataset(tmp_path / 'shared' / 'tiny')
  keras = make_dataset(tmp_path / 'keras' / 'datasets' / 'tiny')
  monkeypatch.setenv('SCAE_DATA_DIR', str(env))
  assert data.resolve_data_dir('tiny', explicit) == str(explicit)
  assert data.resolve_data_dir('tiny') == str(env)
  # An explicit folder without the files is skipped (with a warning).
  assert data.resolve_data_dir('tiny', tmp_path / 'empty') == str(env)
  assert f"data_dir argument={tmp_path / 'empty'} holds no complete" in (
      caplog.text)
  monkeypatch.delenv('SCAE_DATA_DIR')
  assert data.resolve_data_dir('tiny') == str(shared)
  os.remove(shared / FILES[3])  # incomplete: skipped
  assert data.resolve_data_dir('tiny') == str(keras)


def test_resolve_default_shared_dir_is_beside_repo():
  # The unpatched default: <repo>/../shared/data, repo = parent of scae_tf.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(scae_tf.__file__)))
  assert str(data.REPO_ROOT) == repo
  assert UNPATCHED_SHARED_DATA_DIR == data.REPO_ROOT.parent / 'shared' / 'data'


def test_resolve_keras_fashion_mnist_layout(tmp_path):
  folder = make_dataset(tmp_path / 'keras' / 'datasets' / 'fashion-mnist')
  assert data.resolve_data_dir('fashion_mnist') == str(folder)


def test_resolve_nothing_found_lists_files(tmp_path, isolated):
  partial = tmp_path / 'partial'
  partial.mkdir()
  write_idx(partial / FILES[0], tiny_images(2, 0))
  with pytest.raises(FileNotFoundError) as info:
    data.resolve_data_dir('mnist', partial)
  message = str(info.value)
  for name in FILES:
    assert name in message
  assert str(tmp_path / 'shared' / 'mnist') in message
  assert str(tmp_path / 'keras' / 'datasets' / 'mnist') in message
  assert 'SCAE_DATA_DIR' in message and '--data_dir' in message
  assert f'{partial} (data_dir argument): missing train-labels' in message
  assert 'network disabled in tests' in message
  assert isolated == [('mnist', tmp_path / 'keras' / 'datasets' / 'mnist')]


def test_resolve_uses_download(tmp_path, monkeypatch):
  def fake_download(spec, target):
    return make_dataset(target)

  monkeypatch.setattr(locate, 'download_files', fake_download)
  expected = tmp_path / 'keras' / 'datasets' / 'tiny'
  assert data.resolve_data_dir('tiny') == str(expected)
  with pytest.raises(FileNotFoundError, match='download disabled'):
    data.resolve_data_dir('mnist', download=False)


def _md5s(folder):
  return tuple((f, hashlib.md5((folder / f).read_bytes()).hexdigest())
               for f in FILES)


def _offline_spec(tmp_path, *mirrors):
  """`tiny` served from local folders through file:// URLs (no network)."""
  return dataclasses.replace(
      TINY, mirrors=tuple(m.as_uri() + '/' for m in mirrors),
      md5=_md5s(tmp_path / 'server'))


def test_download_tries_mirrors_in_turn(tmp_path, monkeypatch):
  server = make_dataset(tmp_path / 'server')
  down = tmp_path / 'down'  # a mirror that serves nothing
  monkeypatch.setitem(data.DATASETS, 'tiny',
                      _offline_spec(tmp_path, down, server))
  monkeypatch.setattr(locate, 'download_files', REAL_DOWNLOAD)
  target = tmp_path / 'keras' / 'datasets' / 'tiny'
  assert data.resolve_data_dir('tiny') == str(target)
  assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
  shutil.rmtree(server)
  assert data.resolve_data_dir('tiny') == str(target)  # now found, no fetch


def test_download_all_mirrors_fail(tmp_path, monkeypatch):
  make_dataset(tmp_path / 'server')
  last = tmp_path / 'down2'
  monkeypatch.setitem(data.DATASETS, 'tiny',
                      _offline_spec(tmp_path, tmp_path / 'down1', last))
  monkeypatch.setattr(locate, 'download_files', REAL_DOWNLOAD)
  with pytest.raises(FileNotFoundError,
                     match=f'(?s)Cannot find the tiny.*{last.as_uri()}/'):
    data.resolve_data_dir('tiny')
  # Not even an empty ~/.keras/datasets/tiny is left behind.
  assert not (tmp_path / 'keras').exists()


def test_failed_download_keeps_the_files_that_arrived(tmp_path, monkeypatch):
  server = make_dataset(tmp_path / 'server')
  monkeypatch.setitem(data.DATASETS, 'tiny', _offline_spec(tmp_path, server))
  monkeypatch.setattr(locate, 'download_files', REAL_DOWNLOAD)
  (server / FILES[1]).unlink()
  with pytest.raises(FileNotFoundError, match='Cannot find the tiny'):
    data.resolve_data_dir('tiny')
  target = tmp_path / 'keras' / 'datasets' / 'tiny'
  assert [p.name for p in target.iterdir()] == [FILES[0]]


def test_download_via_keras_get_file(tmp_path, monkeypatch):
  """The real Keras download path, offline: file:// URLs, md5-checked."""
  server = make_dataset(tmp_path / 'server')
  spec = _offline_spec(tmp_path, server)
  monkeypatch.setitem(data.DATASETS, 'tiny', spec)
  monkeypatch.setattr(locate, 'download_files', REAL_DOWNLOAD)
  target = tmp_path / 'keras' / 'datasets' / 'tiny'
  assert data.resolve_data_dir('tiny') == str(target)
  assert data.load_dataset('tiny', 'test')[0].shape == (13, 28, 28)

  # A file failing its md5 is refused and not left behind.
  bad = dict(spec.md5, **{FILES[0]: '0' * 32})
  monkeypatch.setitem(data.DATASETS, 'tiny',
                      dataclasses.replace(spec, md5=tuple(bad.items())))
  os.remove(target / FILES[0])
  with pytest.raises(FileNotFoundError, match='(?s)Looked in.*hash'):
    data.resolve_data_dir('tiny')
  assert not (target / FILES[0]).exists()


def test_resolve_real_files():
  root = data_path('mnist').parent
  for name in ('mnist', 'fashion_mnist'):
    assert data.resolve_data_dir(name, root) == str(root / name)


# ---------------------------------------------------------------------------
# Preprocessing.


def test_pad_center_exact():
  images = tiny_images(3, 0)
  out = data.preprocess(images, 'pad_center')
  assert out.shape == (3, 40, 40, 1) and out.dtype == np.float32
  np.testing.assert_array_equal(out[:, 6:34, 6:34, 0],
                                images.astype(np.float32) / 255)
  out[:, 6:34, 6:34] = 0
  assert not out.any()


def _find_offset(canvas, image):
  """The (top, left) where uint8 `image` sits, intact, on the float canvas
  [40, 40, 1] with nothing else on it; AssertionError if nowhere."""
  for top, left in itertools.product(range(13), range(13)):
    window = canvas[top:top + 28, left:left + 28, 0]
    if np.array_equal(window, image.astype(np.float32) / 255):
      rest = canvas[..., 0].copy()
      rest[top:top + 28, left:left + 28] = 0
      if not rest.any():
        return top, left
  raise AssertionError('digit not found intact on the canvas')


def test_pad_shift_keeps_ink_covers_offsets_reproducible():
  images = np.zeros([400, 28, 28], np.uint8)
  images[:, 0, 0] = 200   # corner pixels pin down the offset
  images[:, 27, 27] = 100
  images[:, 5:20, 9:15] = tiny_images(400, 1)[:, 5:20, 9:15]
  out = data.pad_shift(images, np.random.RandomState(7))
  assert out.shape == (400, 40, 40, 1) and out.dtype == np.float32
  np.testing.assert_allclose(out.sum((1, 2, 3)),
                             images.astype(np.float32).sum((1, 2)) / 255,
                             rtol=1e-5)
  offsets = np.array([_find_offset(c, i) for c, i in zip(out[:60], images)])
  all_offsets = np.array([np.argwhere(c[..., 0] == np.float32(200 / 255))[0]
                          for c in out])
  np.testing.assert_array_equal(offsets, all_offsets[:60])
  # Uniform over 0..12 per axis: every value shows up among 400 draws.
  assert set(all_offsets[:, 0]) == set(range(13))
  assert set(all_offsets[:, 1]) == set(range(13))
  np.testing.assert_array_equal(
      out, data.preprocess(images, 'pad_shift', np.random.RandomState(7)))
  assert not np.array_equal(
      out, data.pad_shift(images, np.random.RandomState(8)))
  # A Generator works too and is reproducible.
  gen = data.pad_shift(images, np.random.default_rng(3))
  np.testing.assert_array_equal(gen,
                                data.pad_shift(images, np.random.default_rng(3)))


def test_pad_shift_redraws_each_call():
  images = tiny_images(50, 2)
  rng = np.random.RandomState(0)
  assert not np.array_equal(data.pad_shift(images, rng),
                            data.pad_shift(images, rng))


def _pil_reference(image):
  return np.asarray(Image.fromarray(image).resize(
      (40, 40), Image.BICUBIC)).astype(np.float32) / np.float32(255)


def test_resize_matches_pil_bicubic():
  images = tiny_images(4, 3)
  out = data.preprocess(images, 'resize')
  assert out.shape == (4, 40, 40, 1) and out.dtype == np.float32
  for image, o in zip(images, out):
    np.testing.assert_array_equal(o[..., 0], _pil_reference(image))
  assert 0 <= out.min() and out.max() <= 1


def test_resize_matches_pil_on_real_mnist():
  images, _ = data.load_split(str(data_path('mnist')), 'test')
  images = images[:5]
  out = data.resize(images)
  for image, o in zip(images, out):
    np.testing.assert_array_equal(o[..., 0], _pil_reference(image))


def test_resize_cache_reused_and_invalidated(tiny_dir, tmp_path, monkeypatch):
  calls = []
  original = data.resize_uint8

  def counting_resize(images, canvas_size=40):
    calls.append(len(images))
    return original(images, canvas_size)

  monkeypatch.setattr(preprocessing, 'resize_uint8', counting_resize)
  first, labels = data.load_resized('tiny', 'train', tiny_dir)
  assert calls == [50]
  assert first.shape == (50, 40, 40) and first.dtype == np.uint8
  np.testing.assert_array_equal(
      first, original(data.load_split(str(tiny_dir))[0]))
  cache = tmp_path / 'cache'
  assert len(list(cache.glob('tiny_train_resize40_*.npy'))) == 1

  # Second call: read from the cache, no resize at all.
  again, labels2 = data.load_resized('tiny', 'train', tiny_dir)
  assert calls == [50]
  np.testing.assert_array_equal(again, first)
  np.testing.assert_array_equal(labels2, labels)

  # A changed source file misses the cache and recomputes.
  write_idx(tiny_dir / FILES[0], tiny_images(50, 99))
  changed, _ = data.load_resized('tiny', 'train', tiny_dir)
  assert calls == [50, 50]
  np.testing.assert_array_equal(changed, original(tiny_images(50, 99)))
  assert not np.array_equal(changed, first)
  assert len(list(cache.glob('tiny_train_resize40_*.npy'))) == 2
  assert not list(cache.glob('*.tmp'))


def test_resize_cache_corrupt_entry_recomputed(tiny_dir, tmp_path):
  first, _ = data.load_resized('tiny', 'test', tiny_dir)
  (entry,) = (tmp_path / 'cache').glob('tiny_test_*.npy')
  entry.write_bytes(b'garbage')
  again, _ = data.load_resized('tiny', 'test', tiny_dir)
  np.testing.assert_array_equal(again, first)
  np.testing.assert_array_equal(np.load(entry), first)


def test_resize_cache_explicit_dir(tiny_dir, tmp_path):
  data.load_resized('tiny', 'test', tiny_dir, cache_dir=tmp_path / 'mine')
  assert list((tmp_path / 'mine').glob('tiny_test_resize40_*.npy'))


# ---------------------------------------------------------------------------
# BatchStream.


def _take(stream, start, n):
  return list(itertools.islice(stream.batches(start), n))


def _assert_same(a, b):
  assert len(a) == len(b)
  for (ia, la), (ib, lb) in zip(a, b):
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(la, lb)


@pytest.mark.parametrize('mode', data.MODES)
def test_stream_shapes_and_epoch_order(tiny_dir, mode):
  stream = data.BatchStream('tiny', 'train', 8, mode, seed=5,
                            data_dir=tiny_dir)
  assert stream.steps_per_epoch == 6  # 50 // 8, remainder dropped
  batches = _take(stream, 0, 12)
  for images, labels in batches:
    assert images.shape == (8, 40, 40, 1) and images.dtype == np.float32
    assert labels.shape == (8,) and labels.dtype == np.int64
    assert 0 <= images.min() and images.max() <= 1
  for epoch in range(2):
    seen = np.concatenate([l for _, l in batches[6 * epoch:6 * epoch + 6]])
    order = np.random.RandomState([5, epoch]).permutation(50)
    np.testing.assert_array_equal(seen, order[:48])  # labels == indices
  # The images are the preprocessed images of those examples.
  raw, _ = data.load_dataset('tiny', 'train', tiny_dir)
  images, labels = batches[0]
  if mode == 'pad_center':
    np.testing.assert_array_equal(images, data.pad_center(raw[labels]))
  elif mode == 'resize':
    np.testing.assert_array_equal(images, data.resize(raw[labels]))
  else:
    for canvas, index in zip(images, labels):
      _find_offset(canvas, raw[index])


def test_stream_epoch_is_permutation(tmp_path, monkeypatch):
  folder = make_dataset(tmp_path / 'd48', n_train=48)
  spec = data.DatasetSpec(name='tiny', num_examples=(('train', 48),
                                                     ('test', 13)),
                          num_classes=256)
  monkeypatch.setitem(data.DATASETS, 'tiny', spec)
  stream = data.BatchStream('tiny', 'train', 12, 'pad_shift', seed=1,
                            data_dir=folder)
  for epoch in range(3):
    labels = np.concatenate([l for _, l in _take(stream, 4 * epoch, 4)])
    np.testing.assert_array_equal(np.sort(labels), np.arange(48))


def test_stream_deterministic_and_seed_dependent(tiny_dir):
  def stream(seed):
    return data.BatchStream('tiny', 'train', 8, 'pad_shift', seed=seed,
                            data_dir=tiny_dir)
  _assert_same(_take(stream(3), 0, 8), _take(stream(3), 0, 8))
  other = _take(stream(4), 0, 1)[0]
  assert not np.array_equal(_take(stream(3), 0, 1)[0][1], other[1])


def test_stream_pad_shift_redrawn_per_epoch(tiny_dir):
  stream = data.BatchStream('tiny', 'train', 10, 'pad_shift', seed=0,
                            data_dir=tiny_dir)
  epochs = [np.concatenate([i for i, _ in _take(stream, 5 * e, 5)])
            for e in range(2)]
  labels = [np.concatenate([l for _, l in _take(stream, 5 * e, 5)])
            for e in range(2)]
  by_example = [imgs[np.argsort(l)] for imgs, l in zip(epochs, labels)]
  # Same examples (50 % 10 == 0), other placements.
  differs = [not np.array_equal(a, b) for a, b in zip(*by_example)]
  assert sum(differs) > 40


@pytest.mark.parametrize('mode', ['pad_shift', 'resize'])
@pytest.mark.parametrize('start', [0, 1, 5, 6, 7, 13])
def test_stream_resume(tiny_dir, mode, start):
  def stream():
    return data.BatchStream('tiny', 'train', 8, mode, seed=11,
                            data_dir=tiny_dir)
  full = _take(stream(), 0, 20)
  _assert_same(_take(stream(), start, 20 - start), full[start:])
  _assert_same([stream().batch(s) for s in range(start, 20)], full[start:])
  _assert_same(list(stream().batches(start, num_steps=3)),
               full[start:start + 3])


def test_stream_from_arrays_matches_dataset(tiny_dir):
  images, labels = data.load_dataset('tiny', 'train', tiny_dir)
  for mode in data.MODES:
    a = data.BatchStream('tiny', 'train', 8, mode, seed=2, data_dir=tiny_dir)
    b = data.BatchStream.from_arrays(images, labels, 8, mode, seed=2)
    _assert_same(_take(a, 4, 4), _take(b, 4, 4))


def test_stream_bad_arguments(tiny_dir):
  with pytest.raises(ValueError, match='batch_size'):
    data.BatchStream('tiny', 'train', 51, 'resize', data_dir=tiny_dir)
  with pytest.raises(ValueError, match='seed'):
    data.BatchStream('tiny', 'train', 5, 'resize', seed=-1, data_dir=tiny_dir)
  stream = data.BatchStream('tiny', 'train', 5, 'resize', data_dir=tiny_dir)
  with pytest.raises(ValueError, match='start_step'):
    next(stream.batches(-1))


def test_stream_as_tf_dataset(tiny_dir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  stream = data.BatchStream('tiny', 'train', 8, 'pad_shift', seed=4,
                            data_dir=tiny_dir)
  ds = stream.as_tf_dataset(start_step=4)
  images_spec, labels_spec = ds.element_spec
  assert images_spec.shape.as_list() == [8, 40, 40, 1]
  assert images_spec.dtype == tf.float32 and labels_spec.dtype == tf.int64
  assert labels_spec.shape.as_list() == [8]
  got = [(i.numpy(), l.numpy()) for i, l in ds.take(5)]
  _assert_same(got, _take(stream, 4, 5))


# ---------------------------------------------------------------------------
# eval_batches.


@pytest.mark.parametrize('mode', data.MODES)
def test_eval_batches_natural_order_partial_last(tiny_dir, mode):
  batches = list(data.eval_batches('tiny', 'test', 5, mode, tiny_dir))
  assert [len(l) for _, l in batches] == [5, 5, 3]
  np.testing.assert_array_equal(np.concatenate([l for _, l in batches]),
                                np.arange(13))
  images = np.concatenate([i for i, _ in batches])
  assert images.shape == (13, 40, 40, 1) and images.dtype == np.float32
  # Deterministic, and independent of batch size; `limit` truncates.
  again = np.concatenate(
      [i for i, _ in data.eval_batches('tiny', 'test', 4, mode, tiny_dir)])
  np.testing.assert_array_equal(images, again)
  limited = list(data.eval_batches('tiny', 'test', 4, mode, tiny_dir,
                                   limit=6))
  assert [len(l) for _, l in limited] == [4, 2]
  np.testing.assert_array_equal(np.concatenate([i for i, _ in limited]),
                                images[:6])


def test_eval_batches_pad_shift_seed(tiny_dir):
  def images(seed):
    return np.concatenate([i for i, _ in data.eval_batches(
        'tiny', 'test', 13, 'pad_shift', tiny_dir, seed=seed)])
  assert not np.array_equal(images(0), images(1))


# ---------------------------------------------------------------------------
# The real files.


@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist'])
def test_real_dataset_sizes(name):
  root = data_path(name).parent
  images, labels = data.load_dataset(name, 'test', root)
  assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
  assert set(np.unique(labels)) == set(range(10))
  batch = next(data.eval_batches(name, 'test', 100, 'pad_center', root))
  assert batch[0].shape == (100, 40, 40, 1)
