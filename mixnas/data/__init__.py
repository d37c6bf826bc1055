"""Datasets the supernet trains on: the embedded ``digits`` task, CIFAR-10/100 pickles, ImageFolder trees.

``load_dataset(spec, input_size)`` is the entry point; ``make_loader`` wraps a dataset in a DataLoader whose
shuffling is fixed by a seed.
"""

from mixnas.data.loaders import DatasetBundle, load_dataset, make_loader
from mixnas.errors import DataError

__all__ = ["DataError", "DatasetBundle", "load_dataset", "make_loader"]
