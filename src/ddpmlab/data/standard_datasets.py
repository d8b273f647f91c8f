"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's dataset classes, local files first.

Where the files are looked for, in order: ``data.root`` in torchvision's own layout
(``<root>/MNIST/raw/``, ``<root>/cifar-10-batches-py/``), ``<root>/<source>/`` and ``<root>/``
with the release archives dropped in, then known system locations (Debian's
``dataset-fashion-mnist`` package). Files are checked against published MD5 sums before
use (for the IDX sources, of the decompressed content); a download is tried only when nothing
is found locally.
Every failure is one :class:`DataUnavailable` that lists where we looked and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpmlab.data.downloads import socket_timeout
from ddpmlab.data.image_set import DataUnavailable, ImageSet, SourceData

# Published MD5 sums of the *decompressed* IDX files (the release lists them for the .gz archives,
# which re-compression changes; torchvision checks those when it downloads).
IDX_CONTENT_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


@dataclass(frozen=True)
class StandardDataset:
    name: str  # data.source
    torchvision_class: str
    system_dirs: tuple[Path, ...] = ()
    install_hint: str = ""


DATASETS = {
    "mnist": StandardDataset("mnist", "MNIST"),
    "fashion_mnist": StandardDataset(
        "fashion_mnist",
        "FashionMNIST",
        (Path("/usr/share/datasets/fashion-mnist"),),
        "On Debian / Ubuntu: `sudo apt-get install dataset-fashion-mnist` (installs the four archives in /usr/share/datasets/fashion-mnist/).",
    ),
    "cifar10": StandardDataset("cifar10", "CIFAR10"),
}


def md5_of(path: Path) -> str:
    from torchvision.datasets.utils import calculate_md5

    return calculate_md5(str(path))


def verify(files: dict[Path, str]) -> None:
    """Raise DataUnavailable naming every file whose MD5 differs from the published one."""
    bad = [(path, expected, md5_of(path)) for path, expected in files.items()]
    bad = [item for item in bad if item[1] != item[2]]
    if bad:
        lines = [f"  {path}: md5 {actual}, expected {expected}" for path, expected, actual in bad]
        raise DataUnavailable(
            "checksum mismatch (a truncated download or a different release):\n" + "\n".join(lines) + "\nDelete these files and run again."
        )


def unavailable(spec: StandardDataset, looked: list[Path], files: list[str], urls: list[str], cause: Exception, root: Path) -> DataUnavailable:
    where = "\n".join(f"  {d}" for d in looked)
    lines = [
        f"data.source={spec.name}: the dataset files were not found locally and the download failed ({type(cause).__name__}: {cause}).".replace(
            "\n", " "
        ),
        f"Looked for {', '.join(files)} in:",
        where,
        f"Download URL{'s' if len(urls) > 1 else ''}: {', '.join(urls)}",
        f"To fix: run once where the internet is reachable, or place the files in {root / spec.name}/ (or set data.root).",
    ]
    if spec.install_hint:
        lines.append(spec.install_hint)
    return DataUnavailable("\n".join(lines))


def content_md5(path: Path) -> str:
    """MD5 of a file's content, decompressed on the fly for .gz."""
    digest = hashlib.md5()
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _idx(spec: StandardDataset, cls: Any, root: Path) -> tuple[list[Any], dict[str, Any]]:
    """MNIST-format sources: the four IDX files, extracted or gzipped.

    The decompressed content is checked against the published MD5 of each IDX file, so
    re-compressed archives (Debian's differ from the release's byte for byte) verify too.
    Verified files are put, extracted, in torchvision's raw folder and read by its class.
    """
    raw = root / cls.__name__ / "raw"  # torchvision's layout
    expected = IDX_CONTENT_MD5[spec.name]
    looked = [raw, root / spec.name, root, *spec.system_dirs]
    urls = [f"{cls.mirrors[0]}{name}.gz" for name in expected]

    def candidates(folder: Path) -> dict[str, Path] | None:
        found = {name: next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None) for name in expected}
        return None if None in found.values() else found

    found = next(((d, files) for d in looked if (files := candidates(d)) is not None), None)
    if found is not None:
        folder, files = found
        bad = [(path, expected[name], md5) for name, path in files.items() if (md5 := content_md5(path)) != expected[name]]
        if bad:
            lines = "\n".join(f"  {path}: content md5 {md5}, expected {want}" for path, want, md5 in bad)
            raise DataUnavailable(f"data.source={spec.name}: checksum mismatch (truncated, corrupt or a different release):\n{lines}\nReplace these files.")
        raw.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            if path != raw / name:  # torchvision reads extracted files from its raw folder; temp + rename: never half a file
                with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as src, open(raw / f".{name}.part", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(raw / f".{name}.part", raw / name)
        origin = {"files": str(folder), "verified": "md5 of the decompressed IDX files against the published checksums"}
        try:
            return [cls(str(root), train=flag, download=False) for flag in (True, False)], origin
        except Exception as e:  # a verified file that still fails to parse
            raise DataUnavailable(f"data.source={spec.name}: could not read the IDX files in {raw}: {e}") from e
    try:
        with socket_timeout():
            sets = [cls(str(root), train=flag, download=True) for flag in (True, False)]
    except Exception as e:  # torchvision raises RuntimeError / URLError / OSError
        raise unavailable(spec, looked, [f"{name}[.gz]" for name in expected], urls, e, root) from e
    origin = {"files": "downloaded", "urls": urls, "verified": "md5 of the release archives (torchvision's list)"}
    return sets, origin


def _cifar(spec: StandardDataset, cls: Any, root: Path) -> tuple[list[Any], dict[str, Any]]:
    """CIFAR-10: the python-pickle batches (cifar-10-batches-py/) or the release archive."""
    batches = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    looked = [root, root / spec.name, *spec.system_dirs]
    extracted = next((d for d in looked if (d / cls.base_folder).is_dir()), None)
    if extracted is not None:
        base = extracted / cls.base_folder
        missing = [name for name, _ in batches if not (base / name).is_file()]
        if missing:
            raise DataUnavailable(f"data.source={spec.name}: {base} lacks {', '.join(missing)}; delete it or complete it from {cls.url}")
        verify({base / name: md5 for name, md5 in batches})
        root, origin = extracted, {"files": str(base), "verified": "md5 of every batch file (torchvision's list)"}
    else:
        found = next((d for d in looked if (d / cls.filename).is_file()), None)
        if found is not None:
            verify({found / cls.filename: cls.tgz_md5})
            if found != root:
                root.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(found / cls.filename, root / cls.filename)
            origin = {"files": str(found / cls.filename), "verified": "md5 of the release archive (torchvision's list)"}
        else:
            origin = {"files": "downloaded", "urls": [cls.url], "verified": "md5 of the release archive (torchvision's list)"}
    try:
        with socket_timeout():
            sets = [cls(str(root), train=flag, download=extracted is None) for flag in (True, False)]
    except Exception as e:
        if origin["files"] == "downloaded":
            raise unavailable(spec, looked, [cls.base_folder, cls.filename], [cls.url], e, root) from e
        raise DataUnavailable(f"data.source={spec.name}: could not read {origin['files']}: {e}") from e
    return sets, origin


def load_standard(name: str, root: Path) -> SourceData:
    """The official train / test splits of ``name`` at their native size: (N, C, H, W) uint8 + labels."""
    import torchvision.datasets

    spec = DATASETS[name]
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    if name == "cifar10":
        sets, origin = _cifar(spec, cls, root)
        # torchvision holds (N, H, W, C) as a transposed view of the (N, C, H, W) batches: no copy here
        to_set = lambda s: ImageSet(np.ascontiguousarray(s.data.transpose(0, 3, 1, 2)), np.asarray(s.targets, dtype=np.int64))
    else:
        sets, origin = _idx(spec, cls, root)
        to_set = lambda s: ImageSet(s.data.numpy()[:, None], s.targets.numpy().astype(np.int64))
    train, test = (to_set(s) for s in sets)
    return SourceData(train, test, list(sets[0].classes), {"torchvision_class": spec.torchvision_class, **origin})
