"""The datasets this port knows: image shape, split sizes, classes, the IDX
file names of each split, and the mirrors and checksums to download them."""

import dataclasses

IDX_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
SPLITS = tuple(IDX_FILES)
ALL_FILES = tuple(f for split in SPLITS for f in IDX_FILES[split])


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What we know about one dataset: shapes, sizes and where to get it.

  `dir_names` are the folder names the files may live under (ours first,
  then e.g. Keras' own `fashion-mnist`). `mirrors` are base URLs holding the
  four IDX files; `md5` the published checksums of the .gz files, used to
  verify a download. `implemented=False` marks a dataset the fork supports
  but this port does not read yet.
  """

  name: str
  image_shape: tuple = (28, 28)
  num_examples: tuple = (('train', 60000), ('test', 10000))
  num_classes: int = 10
  dir_names: tuple = ()
  mirrors: tuple = ()
  md5: tuple = ()
  implemented: bool = True

  @property
  def folder_names(self):
    return (self.name,) + tuple(d for d in self.dir_names if d != self.name)

  def split_size(self, split):
    return dict(self.num_examples)[split]


DATASETS = {
    'mnist': DatasetSpec(
        name='mnist',
        mirrors=('https://storage.googleapis.com/cvdf-datasets/mnist/',
                 'https://ossci-datasets.s3.amazonaws.com/mnist/',
                 'http://yann.lecun.com/exdb/mnist/'),
        md5=(('train-images-idx3-ubyte.gz',
              'f68b3c2dcbeaaa9fbdd348bbdeb94873'),
             ('train-labels-idx1-ubyte.gz',
              'd53e105ee54ea40749a09fcbcd1e9432'),
             ('t10k-images-idx3-ubyte.gz', '9fb629c4189551a2d022fa330f9573f3'),
             ('t10k-labels-idx1-ubyte.gz',
              'ec29112dd5afa0611ce80d1b7f02629c'))),
    'fashion_mnist': DatasetSpec(
        name='fashion_mnist',
        dir_names=('fashion-mnist',),  # Keras' `fashion_mnist.load_data()`.
        mirrors=('https://storage.googleapis.com/tensorflow/tf-keras-datasets/',
                 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'),
        md5=(('train-images-idx3-ubyte.gz',
              '8d4fb7e6c68d591d4c3dfef9ec88bf0d'),
             ('train-labels-idx1-ubyte.gz',
              '25c81989df183df01b3e8a0aad5dffbe'),
             ('t10k-images-idx3-ubyte.gz', 'bef4ecab320f06d8554ea6380940ec79'),
             ('t10k-labels-idx1-ubyte.gz',
              'bb300cfdad3c16e7a12a480ee83cd310'))),
    # The fork's other datasets (configs.SVHN, CIFAR10, GTSRB): not yet read.
    'svhn_cropped': DatasetSpec(name='svhn_cropped', image_shape=(32, 32, 3),
                                implemented=False),
    'cifar10': DatasetSpec(name='cifar10', image_shape=(32, 32, 3),
                           implemented=False),
    'gtsrb': DatasetSpec(name='gtsrb', implemented=False),
}


def get_dataset_spec(dataset):
  """The `DatasetSpec` of an implemented dataset, else a ValueError."""
  spec = DATASETS.get(dataset)
  implemented = sorted(k for k, v in DATASETS.items() if v.implemented)
  if spec is None:
    raise ValueError(f'Unknown dataset {dataset!r}; known datasets: '
                     f'{sorted(DATASETS)} (implemented: {implemented}).')
  if not spec.implemented:
    raise ValueError(f'Dataset {dataset!r} (one of the fork\'s datasets) is '
                     'not implemented yet in scae_tf.data; implemented: '
                     f'{implemented}.')
  return spec


def check_split(split):
  """ValueError naming the known splits unless `split` is one of them."""
  if split not in IDX_FILES:
    raise ValueError(f'Unknown split {split!r}; expected one of '
                     f'{list(SPLITS)}.')
