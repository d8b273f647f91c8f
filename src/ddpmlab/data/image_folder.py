"""``data.source: folder``: any directory of images, streamed into one uint8 array.

Files are found recursively and sorted, so the order (and so the split) is the same on every
machine. If every image sits inside a sub-folder of the root, the first path component is
the class (``root/cat/x.png`` -> class ``cat``); otherwise all images are one class. Hidden
files and folders (names starting with '.') are ignored; every other file must be a readable
PNG, JPEG or WebP, or it is reported by name (skipped and counted with ``data.skip_bad``).

Images are decoded on a few threads (Pillow releases the GIL while decoding) and written
straight into a preallocated (N, C, S, S) array: memory is the array plus one chunk of
decoded images, whatever the folder's size.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ddpmlab.data.image_set import DataUnavailable, ImageSet, SourceData, chunks

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".webp")
MAX_LISTED = 100  # bad files named in an error message or the dataset card; the count is always exact


class BadImage(Exception):
    """One file that is not a decodable image; the message is the reason."""


def scan(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Every non-hidden file under ``root``, sorted, with its label and the class names."""
    if not root.is_dir():
        raise DataUnavailable(f"data.root={str(root)!r} is not a directory; data.source=folder needs a folder of images")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataUnavailable(f"data.root={str(root)!r} holds no files; expected images ({', '.join(IMAGE_SUFFIXES)}), optionally in class sub-folders")
    parts = [p.relative_to(root).parts for p in files]
    if all(len(part) > 1 for part in parts):
        classes = sorted({part[0] for part in parts})
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[part[0]] for part in parts], dtype=np.int64)
    else:
        classes = [root.resolve().name or "images"]
        labels = np.zeros(len(files), dtype=np.int64)
    return files, labels, classes


def centre_square(image: Image.Image) -> Image.Image:
    """The largest centred square. Cropped before resizing: resizing with a crop box would blend in
    pixels from outside it (the filter's support reaches past the box)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def decode(path: Path, size: int, channels: int) -> np.ndarray:
    """One file -> (channels, size, size) uint8: EXIF orientation applied, the centre square cropped and
    resized to ``size`` (bicubic, antialiased when shrinking). Raises BadImage with the reason."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise BadImage(f"not an image file (allowed: {', '.join(IMAGE_SUFFIXES)})")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated files fail here, not later
            image = ImageOps.exif_transpose(image).convert("L" if channels == 1 else "RGB")
            image = centre_square(image).resize((size, size), Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"{type(e).__name__}: {e}") from e
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def load_folder(root: Path, size: int, channels: int | None, *, skip_bad: bool = False, workers: int | None = None) -> SourceData:
    """All images under ``root`` as (N, channels, size, size) uint8 (channels None: 3, RGB)."""
    channels = channels or 3
    files, labels, classes = scan(root)
    images = np.empty((len(files), channels, size, size), dtype=np.uint8)
    kept = np.zeros(len(files), dtype=bool)
    bad: list[tuple[str, str]] = []

    def attempt(path: Path) -> np.ndarray | BadImage:
        try:
            return decode(path, size, channels)
        except BadImage as e:
            return e

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool, tqdm(total=len(files), desc="decode", unit="img") as bar:
        for part in chunks(len(files), 256):
            for i, result in zip(range(part.start, part.stop), pool.map(attempt, files[part.start : part.stop])):
                if isinstance(result, BadImage):
                    bad.append((str(files[i].relative_to(root)), str(result)))
                else:
                    images[i], kept[i] = result, True
            bar.update(part.stop - part.start)
    if bad and not skip_bad:
        listed = "\n".join(f"  {name}: {reason}" for name, reason in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise DataUnavailable(
            f"{len(bad)} of {len(files)} files under {root} are not readable images:\n{listed}{more}\n"
            "Fix or remove them, or set data.skip_bad: true to skip them (they are counted in the dataset card and the report)."
        )
    if not kept.any():
        raise DataUnavailable(f"no readable image under {root}: all {len(files)} files were bad")
    if bad:
        images, labels = images[kept], labels[kept]  # one compacting copy, only when something was skipped
    origin = {
        "folder": str(root),
        "files": len(files),
        "skipped": len(bad),
        "skipped_files": [f"{name}: {reason}" for name, reason in bad[:MAX_LISTED]],
    }
    return SourceData(ImageSet(images, labels), None, classes, origin)
