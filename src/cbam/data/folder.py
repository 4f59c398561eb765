"""An image-folder tree: ``root/<class>/<image>``, one sub-folder per class (Pillow).

As a dataset (``folder``), ``root`` holds either ``train/`` and ``test/`` trees or
the class folders themselves. Class names, and so label numbers, always come from
the training tree; test folders are mapped by name, so ``test/`` may lack a class
but may not add one. Without a split, a fixed, seeded part of every class is held
out as the test split, and a note says so.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .datasets import Split, register_dataset

_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0
_log = logging.getLogger(__name__)
_noted: set = set()  # roots whose hold-out note was printed (once per process, not per split)

Files = List[Tuple[str, int]]


def _class_dirs(root: str) -> List[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root} (expected root/<class>/<image files>)")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected root/<class>/<image files>)")
    return classes


def list_image_folder(root: str, classes: Optional[Sequence[str]] = None) -> Tuple[Files, List[str]]:
    """``([(path, label)], class names)`` without decoding anything.

    With ``classes`` given (the training split's), each folder is labelled by its
    position in that list and a folder not in it is an error. An empty class
    folder is an error too: it would be a class no image can teach.
    """
    found = _class_dirs(root)
    names = list(classes) if classes is not None else found
    index: Dict[str, int] = {c: i for i, c in enumerate(names)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise ValueError(f"{root}: class folder(s) {unknown} are not classes of the training split "
                         f"({', '.join(names)})")
    files: Files = []
    for c in found:
        imgs = sorted(f for f in os.listdir(os.path.join(root, c)) if f.lower().endswith(_EXT))
        if not imgs:
            raise ValueError(f"{os.path.join(root, c)}: empty class folder (no {', '.join(_EXT)} files); "
                             "remove it or add images")
        files += [(os.path.join(root, c, f), index[c]) for f in imgs]
    return files, names


def decode_images(files: Files, size: int = 32, grayscale: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Decode and resize to ``size`` x ``size`` -> ``(uint8 (N, C, S, S), int64 labels)``."""
    from PIL import Image, UnidentifiedImageError
    images = []
    for p, _ in files:
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L" if grayscale else "RGB").resize((size, size), Image.BILINEAR),
                               dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{p}: cannot decode image ({e})") from None
        images.append(a[None] if grayscale else a.transpose(2, 0, 1))
    return np.stack(images), np.asarray([lab for _, lab in files], dtype=np.int64)


def read_image_folder(root: Union[str, os.PathLike], size: int = 32, grayscale: bool = False,
                      classes: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Load every image, resized to ``size`` x ``size`` -> ``(uint8 (N, C, S, S), labels, class names)``."""
    files, names = list_image_folder(os.fspath(root), classes)
    images, labels = decode_images(files, size, grayscale)
    return images, labels, names


def holdout(files: Files, split: str, fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED) -> Files:
    """The ``split`` part of a seeded per-class hold-out: ``fraction`` of each class (at least one image
    of every class with two or more) is test; the same files on every call and every machine."""
    rng = np.random.default_rng(seed)
    by_class: Dict[int, Files] = {}
    for f in files:
        by_class.setdefault(f[1], []).append(f)
    out: Files = []
    for label in sorted(by_class):
        group = by_class[label]
        n_test = max(1, round(fraction * len(group))) if len(group) > 1 else 0
        test = set(rng.permutation(len(group))[:n_test].tolist())
        out += [f for i, f in enumerate(group) if (i in test) == (split == "test")]
    return out


def load_folder(split: str, root: Optional[str], image_size: int = 32) -> Split:
    if root is None:
        raise ValueError("folder needs --data-root (root/<class>/<images>; optional train/ and test/ splits)")
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if os.path.isdir(test_dir) and not os.path.isdir(train_dir):
        raise ValueError(f"{root} has test/ but no train/; give both, or neither to hold out a test part")
    pool = train_dir if os.path.isdir(train_dir) else root
    files, classes = list_image_folder(pool)
    if os.path.isdir(test_dir):
        if split == "test":
            files, _ = list_image_folder(test_dir, classes)
        source = os.path.join(root, split)
    else:
        if root not in _noted:
            _noted.add(root)
            _log.warning("note: %s has no train/ and test/ folders; holding out %.0f%% of every class (seed %d) as "
                         "the test split", root, 100 * HOLDOUT_FRACTION, HOLDOUT_SEED)
        files = holdout(files, split)
        if not files:
            raise ValueError(f"{pool}: too few images to hold out a test split (need 2 per class)")
        source = f"{pool} ({split} part of a seeded {HOLDOUT_FRACTION:.0%} hold-out)"
    images, labels = decode_images(files, image_size)
    return Split(images, labels, classes, source)


register_dataset("folder", load_folder)  # constants computed from the training split
