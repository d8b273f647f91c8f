"""Data sources on small files the tests write in the standard formats: IDX (MNIST, Fashion-MNIST),
CIFAR-10's python pickles, and an image folder with bad files; plus resizing, channels and the card."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from click.testing import CliRunner
from PIL import Image
from stages import prepare

from conftest import write_tiny_params
from ddpmlab.config import DataConfig
from ddpmlab.data import standard_datasets
from ddpmlab.data.image_folder import load_folder
from ddpmlab.data.image_set import DataUnavailable, ImageSet
from ddpmlab.data.sources import convert_channels, fit_images, load_source, pixel_stats

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# -- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: magic (0, 0, type 0x08 = uint8, ndim), big-endian int32 sizes, then the data."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(folder: Path, rng: np.random.Generator, side: int = 6, gz: bool = False) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 20, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (7, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 7, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def publish(monkeypatch: pytest.MonkeyPatch, source: str, arrays: dict[str, np.ndarray]) -> None:
    """Stand-in for the published checksums: those of the files this test wrote."""
    sums = {name: hashlib.md5(idx_bytes(array)).hexdigest() for name, array in arrays.items()}
    monkeypatch.setitem(standard_datasets.IDX_CONTENT_MD5, source, sums)


@pytest.fixture
def no_system_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide /usr/share/datasets (Debian's package may be installed here) and make downloads fail at once."""
    for name, spec in standard_datasets.DATASETS.items():
        monkeypatch.setitem(standard_datasets.DATASETS, name, type(spec)(spec.name, spec.torchvision_class, (tmp_path / "system" / name,), spec.install_hint))
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/mnist/"])
    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", ["http://127.0.0.1:9/fashion/"])
    monkeypatch.setattr(tvd.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")


@pytest.mark.parametrize("gz", [False, True], ids=["extracted", "gzipped"])
@pytest.mark.parametrize("source", ["mnist", "fashion_mnist"])
def test_idx_files_in_the_source_folder_load_through_torchvision(tmp_path, monkeypatch, no_system_dirs, source, gz):
    arrays = write_idx(tmp_path / "raw" / source, np.random.default_rng(0), gz=gz)
    publish(monkeypatch, source, arrays)
    data = load_source(DataConfig(source=source, root=str(tmp_path / "raw"), image_size=6))
    assert data.train.images.shape == (20, 1, 6, 6) and data.test.images.shape == (7, 1, 6, 6)
    np.testing.assert_array_equal(data.train.images[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert data.train.labels.dtype == np.int64 and len(data.classes) == 10
    assert "md5" in data.origin["verified"] and data.origin["files"] == str(tmp_path / "raw" / source)
    assert (tmp_path / "raw" / data.origin["torchvision_class"] / "raw" / "t10k-images-idx3-ubyte").is_file()  # torchvision's layout


def test_idx_archives_in_a_system_folder_are_used(tmp_path, monkeypatch, no_system_dirs):
    arrays = write_idx(tmp_path / "system" / "fashion_mnist", np.random.default_rng(1), gz=True)
    publish(monkeypatch, "fashion_mnist", arrays)
    data = load_source(DataConfig(source="fashion_mnist", root=str(tmp_path / "raw"), image_size=6))
    assert data.origin["files"] == str(tmp_path / "system" / "fashion_mnist")
    np.testing.assert_array_equal(data.test.images[:, 0], arrays["t10k-images-idx3-ubyte"])
    assert (tmp_path / "raw" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()  # extracted for torchvision


def test_idx_checksum_mismatch_names_each_bad_file(tmp_path, monkeypatch, no_system_dirs):
    arrays = write_idx(tmp_path / "raw" / "mnist", np.random.default_rng(2))
    publish(monkeypatch, "mnist", arrays)
    (tmp_path / "raw" / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(arrays["t10k-labels-idx1-ubyte"])[:-3])  # truncated
    with pytest.raises(DataUnavailable, match="checksum mismatch") as error:
        load_source(DataConfig(source="mnist", root=str(tmp_path / "raw"), image_size=6))
    assert "t10k-labels-idx1-ubyte" in str(error.value) and "train-images" not in str(error.value)


def test_missing_files_offline_say_where_we_looked_and_how_to_fix(tmp_path, no_system_dirs):
    with pytest.raises(DataUnavailable) as error:
        load_source(DataConfig(source="fashion_mnist", root=str(tmp_path / "raw"), image_size=28))
    message = str(error.value)
    for expected in (str(tmp_path / "raw" / "FashionMNIST" / "raw"), str(tmp_path / "system" / "fashion_mnist"),
                     "http://127.0.0.1:9/fashion/train-images-idx3-ubyte.gz", "apt-get install dataset-fashion-mnist"):  # fmt: skip
        assert expected in message


def test_missing_data_is_one_clear_error_from_the_prepare_stage(tmp_path, no_system_dirs):
    params = write_tiny_params(tmp_path / "params.yaml", data={"source": "cifar10", "root": str(tmp_path / "raw")})
    result = CliRunner().invoke(prepare.main, ["--params", str(params), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "Error: data.source=cifar10" in result.output and "cifar-10-python.tar.gz" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out" / "train.npz").exists()


# -- CIFAR-10 --------------------------------------------------------------------------------


def write_cifar(base: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The python-pickle release: 5 training batches + test_batch of {'data': (N, 3072) uint8 rows
    (1024 red, 1024 green, 1024 blue, each row-major 32x32), 'labels': [...]}, and batches.meta.
    Returns all images (N, 3, 32, 32) and labels, train batches first."""
    rng = np.random.default_rng(3)
    base.mkdir(parents=True)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"data": x.reshape(per_batch, 3072), "labels": y, "batch_label": name}, f)
        images.append(x)
        labels += y
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}, f)
    return np.concatenate(images), np.array(labels)


def publish_cifar(monkeypatch: pytest.MonkeyPatch, base: Path) -> None:
    md5 = lambda name: hashlib.md5((base / name).read_bytes()).hexdigest()
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5("batches.meta")})


def test_cifar10_batches_load_in_channel_first_order(tmp_path, monkeypatch, no_system_dirs):
    images, labels = write_cifar(tmp_path / "raw" / "cifar-10-batches-py")
    publish_cifar(monkeypatch, tmp_path / "raw" / "cifar-10-batches-py")
    data = load_source(DataConfig(source="cifar10", root=str(tmp_path / "raw"), image_size=32))
    np.testing.assert_array_equal(data.train.images, images[:15])  # red plane first, as in the release
    np.testing.assert_array_equal(data.test.images, images[15:])
    np.testing.assert_array_equal(data.test.labels, labels[15:])
    assert data.classes[0] == "airplane" and data.train.images.flags.c_contiguous


def test_cifar10_archive_is_verified_then_extracted(tmp_path, monkeypatch, no_system_dirs):
    write_cifar(tmp_path / "build" / "cifar-10-batches-py")
    publish_cifar(monkeypatch, tmp_path / "build" / "cifar-10-batches-py")
    archive = tmp_path / "raw" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    data = load_source(DataConfig(source="cifar10", root=str(tmp_path / "raw"), image_size=16, channels=1))
    assert data.train.images.shape == (15, 1, 16, 16)
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", "0" * 32)
    archive.rename(archive.with_name("moved"))
    (tmp_path / "raw" / "cifar-10-batches-py").rename(tmp_path / "extracted-elsewhere")
    (tmp_path / "raw" / "cifar-10-python.tar.gz").unlink()
    archive.with_name("moved").rename(archive)
    with pytest.raises(DataUnavailable, match="checksum mismatch"):
        load_source(DataConfig(source="cifar10", root=str(tmp_path / "raw"), image_size=16))


def test_cifar10_corrupt_batch_is_named(tmp_path, monkeypatch, no_system_dirs):
    base = tmp_path / "raw" / "cifar-10-batches-py"
    write_cifar(base)
    publish_cifar(monkeypatch, base)
    (base / "data_batch_3").write_bytes((base / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DataUnavailable, match="data_batch_3"):
        load_source(DataConfig(source="cifar10", root=str(tmp_path / "raw"), image_size=32))


# -- image folder ----------------------------------------------------------------------------


def save(image: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes of PNG / JPEG / WebP images in several modes and sizes, one truncated PNG, one text file."""
    root = tmp_path / "images"
    rng = np.random.default_rng(4)
    for i in range(6):
        save(Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)), root / "cats" / f"cat{i}.png")
    save(Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L"), root / "cats" / "gray.PNG")
    save(Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), mode="RGBA"), root / "dogs" / "alpha.png")
    save(Image.fromarray(rng.integers(0, 256, (12, 40, 3), dtype=np.uint8)), root / "dogs" / "wide.jpg", quality=95)
    save(Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)), root / "dogs" / "nested" / "deep.webp")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    (root / "dogs" / "broken.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "ignored.png").write_bytes(b"ignored: hidden")
    return root


def test_folder_with_bad_files_fails_naming_each_of_them(image_folder):
    with pytest.raises(DataUnavailable) as error:
        load_folder(image_folder, 8, None)
    message = str(error.value)
    assert "2 of 12 files" in message and "dogs/broken.png" in message and "dogs/notes.txt" in message
    assert "data.skip_bad" in message and "ignored.png" not in message


def test_folder_skip_bad_keeps_the_rest_with_subfolder_classes(image_folder):
    data = load_folder(image_folder, 8, None, skip_bad=True)
    assert data.classes == ["cats", "dogs"] and data.test is None
    assert data.train.images.shape == (10, 3, 8, 8)
    assert np.bincount(data.train.labels).tolist() == [7, 3]
    assert data.origin["skipped"] == 2 and any("broken.png" in f for f in data.origin["skipped_files"])


def test_folder_without_subfolders_is_one_class_and_grayscale_on_request(tmp_path):
    for i in range(3):
        save(Image.new("RGB", (10, 10), (255, 0, 0)), tmp_path / "flat" / f"{i}.png")
    data = load_folder(tmp_path / "flat", 4, 1)
    assert data.classes == ["flat"] and data.train.images.shape == (3, 1, 4, 4)
    assert (data.train.images == 76).all()  # ITU-R 601-2 luma of pure red: 0.299 * 255 = 76.2


def test_folder_images_are_centre_cropped_then_resized(tmp_path):
    """A 30x10 image of red | green | blue thirds: the centre square is all green."""
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)
    pixels[:, :10, 0], pixels[:, 10:20, 1], pixels[:, 20:, 2] = 255, 255, 255
    save(Image.fromarray(pixels), tmp_path / "wide" / "x.png")
    image = load_folder(tmp_path / "wide", 5, 3).train.images[0]
    assert (image[1] == 255).all() and image[0].max() <= 2 and image[2].max() <= 2


def test_prepare_stage_on_a_folder_writes_split_and_card(image_folder, tmp_path):
    params = write_tiny_params(tmp_path / "params.yaml", data={"source": "folder", "root": str(image_folder), "skip_bad": True, "test_fraction": 0.3})
    result = CliRunner().invoke(prepare.main, ["--params", str(params), "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import json

    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["train"]["count"] + card["test"]["count"] == 10 and card["test"]["count"] == 3
    assert card["channels"] == 3 and card["classes"] == ["cats", "dogs"] and card["origin"]["skipped"] == 2
    train, test = ImageSet.load(tmp_path / "out" / "train.npz"), ImageSet.load(tmp_path / "out" / "test.npz")
    assert len(card["content_sha256"]) == 64 and len(train) == 7 and len(test) == 3
    bad = write_tiny_params(tmp_path / "bad.yaml", data={"source": "folder", "root": str(image_folder)})
    failed = CliRunner().invoke(prepare.main, ["--params", str(bad), "--out", str(tmp_path / "out2")])
    assert failed.exit_code == 1 and "broken.png" in failed.output and "Traceback" not in failed.output


# -- conversions and the card ----------------------------------------------------------------


def test_channel_conversion_uses_luma_weights_and_repetition():
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(3, 3, 1, 1)
    np.testing.assert_allclose(convert_channels(rgb, 1).flatten().numpy(), [0.299, 0.587, 0.114], rtol=1e-6)
    gray = torch.rand(2, 1, 4, 4)
    assert torch.equal(convert_channels(gray, 3), gray.expand(-1, 3, -1, -1))


def test_fit_images_resizes_in_chunks_and_keeps_native_data_uncopied(monkeypatch):
    from ddpmlab.data import image_set

    images = np.random.default_rng(5).integers(0, 256, (10, 3, 8, 8), dtype=np.uint8)
    assert fit_images(images, 8, None) is images
    whole = fit_images(images, 4, None)
    monkeypatch.setattr(image_set, "CHUNK", 3)  # chunk boundaries inside the batch change nothing
    np.testing.assert_array_equal(fit_images(images, 4, None), whole)
    # a symmetric resampling filter keeps a linear ramp linear: away from the borders, output pixel i
    # (centred at input coordinate 2i + 0.5) of a ramp 20 * x takes the value 20 * (2i + 0.5)
    ramp = np.broadcast_to(np.arange(8, dtype=np.uint8) * 20, (1, 1, 8, 8)).copy()
    np.testing.assert_array_equal(fit_images(ramp, 4, None)[0, 0, :, 1:3], np.tile([50, 90], (4, 1)))
    flat = np.full((5, 3, 8, 8), 77, dtype=np.uint8)
    assert (fit_images(flat, 4, 1) == 77).all()


def test_pixel_stats_are_exact_per_channel():
    images = np.zeros((4, 2, 2, 2), dtype=np.uint8)
    images[:, 0] = 255  # channel 0 all ones, channel 1 all zeros
    images[:2, 1] = 255  # channel 1: half ones
    stats = pixel_stats(ImageSet(images[:3], np.zeros(3, np.int64)), ImageSet(images[3:], np.zeros(1, np.int64)))
    assert stats["channel_mean"] == [1.0, 0.5] and stats["channel_std"] == [0.0, 0.5]
    assert stats["pixel_mean"] == 0.75 and stats["pixel_std"] == pytest.approx(np.sqrt(0.75 * 0.25), abs=1e-6)


# -- memory ----------------------------------------------------------------------------------

MEMORY_DRIVER = """
import hashlib, json, resource, sys
import torchvision.datasets as tvd
from stages import prepare
import ddpmlab.data.standard_datasets, sklearn.datasets  # every import before the baseline
sums = json.loads(sys.argv[1])
tvd.CIFAR10.train_list = [[name, sums[name]] for name in sorted(sums) if name.startswith("data_batch")]
tvd.CIFAR10.test_list = [["test_batch", sums["test_batch"]]]
tvd.CIFAR10.meta = {**tvd.CIFAR10.meta, "md5": sums["batches.meta"]}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepare.main(["--params", sys.argv[2], "--out", sys.argv[3]], standalone_mode=False)
print(json.dumps({"before_kb": before, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def test_preparing_cifar10_sized_data_needs_less_than_1gb_above_the_arrays(tmp_path):
    """60,000 x 3 x 32 x 32 uint8 (184 MB): peak memory of the prepare stage above its imports."""

    base = tmp_path / "raw" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(6)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 10_000).tolist()}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in base.iterdir()}
    params = write_tiny_params(tmp_path / "params.yaml", data={"source": "cifar10", "root": str(tmp_path / "raw"), "image_size": 32})
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_DRIVER, json.dumps(sums), str(params), str(tmp_path / "out")],
        cwd=root, capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    usage = json.loads(result.stdout.strip().splitlines()[-1])
    arrays_mb = 60_000 * 3 * 32 * 32 / 2**20
    extra_mb = (usage["peak_kb"] - usage["before_kb"]) / 1024
    print(f"prepare cifar10-sized: {extra_mb:.0f} MB above imports, arrays {arrays_mb:.0f} MB")
    assert extra_mb < arrays_mb + 1024
    assert ImageSet.load(tmp_path / "out" / "test.npz").images.shape == (10_000, 3, 32, 32)


def test_download_socket_timeout_is_set_inside_and_restored_after_errors():
    import socket

    from ddpmlab.data.downloads import DOWNLOAD_TIMEOUT_S, socket_timeout

    before = socket.getdefaulttimeout()
    with pytest.raises(RuntimeError), socket_timeout():
        assert socket.getdefaulttimeout() == DOWNLOAD_TIMEOUT_S
        raise RuntimeError("download failed")
    assert socket.getdefaulttimeout() == before
