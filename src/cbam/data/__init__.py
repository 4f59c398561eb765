"""Data: readers (IDX, CIFAR batches, image folders, scikit-learn digits), a name -> loader registry,
batched transforms, loader."""
from . import builtin, cluttered  # noqa: F401  (register the built-in datasets, then the cluttered ones)
from .cifar import read_cifar_batch
from .datasets import Dataset, Split, dataset_spec, list_datasets, load_dataset, register_dataset
from .folder import read_image_folder
from .idx import read_idx, write_idx
from .loader import BatchLoader
from .transforms import EvalTransform, TrainTransform, normalize, random_crop, random_hflip, resize

__all__ = ["Dataset", "Split", "dataset_spec", "list_datasets", "load_dataset", "register_dataset",
           "read_cifar_batch", "read_image_folder", "read_idx", "write_idx", "BatchLoader", "EvalTransform",
           "TrainTransform", "normalize", "random_crop", "random_hflip", "resize"]
