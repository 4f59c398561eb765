"""Data: readers (IDX, CIFAR batches, image folders, scikit-learn digits), batched transforms, loader."""
from .cifar import read_cifar_batch
from .datasets import DATASETS, Dataset, load_dataset
from .folder import read_image_folder
from .idx import read_idx, write_idx
from .loader import BatchLoader
from .transforms import EvalTransform, TrainTransform, normalize, random_crop, random_hflip, resize

__all__ = ["DATASETS", "Dataset", "load_dataset", "read_cifar_batch", "read_image_folder", "read_idx", "write_idx",
           "BatchLoader", "EvalTransform", "TrainTransform", "normalize", "random_crop", "random_hflip", "resize"]
