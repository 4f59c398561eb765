"""An image-folder tree: ``root/<class>/<image>``, one sub-folder per class (Pillow)."""
import os
from typing import List, Tuple, Union

import numpy as np

_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_image_folder(root: Union[str, os.PathLike], size: int = 32, grayscale: bool = False
                      ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Load every image, resized to ``size`` x ``size`` -> ``(uint8 (N, C, S, S), labels, class names)``."""
    from PIL import Image, UnidentifiedImageError

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root} (expected root/<class>/<image files>)")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected root/<class>/<image files>)")
    images, labels = [], []
    for ci, c in enumerate(classes):
        for fn in sorted(os.listdir(os.path.join(root, c))):
            if not fn.lower().endswith(_EXT):
                continue
            p = os.path.join(root, c, fn)
            try:
                with Image.open(p) as im:
                    im = im.convert("L" if grayscale else "RGB").resize((size, size), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"{p}: cannot decode image ({e})") from None
            images.append(a[None] if grayscale else a.transpose(2, 0, 1))
            labels.append(ci)
    if not images:
        raise ValueError(f"{root}: no images with extensions {', '.join(_EXT)}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes
