"""Damaged data files and data folders, on real copies of the MNIST test files: every case is a
message naming the file (or folder) and what to do, never a traceback from gzip or numpy."""

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from signatures.data import DataUnavailableError, load_dataset, prepare, read_idx

IMAGES = "t10k-images-idx3-ubyte.gz"
LABELS = "t10k-labels-idx1-ubyte.gz"


@pytest.fixture(scope="module")
def real_folder():
    folder = Path(os.environ.get("SIGNATURES_DATA_DIR", "")) / "mnist"
    if not (folder / IMAGES).is_file():
        pytest.skip("no MNIST folder: set SIGNATURES_DATA_DIR to a folder of MNIST IDX files")
    return folder


def copy_pair(real_folder, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in (IMAGES, LABELS):
        shutil.copyfile(real_folder / name, folder / name)
        (folder / name).chmod(0o644)
    return folder


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bytes(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_gzip_magic(path):
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_idx_magic(path):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[0:2] = b"\x08\x03"
    path.write_bytes(gzip.compress(bytes(raw)))


def short_of_header(path):
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-784]))  # one image fewer than the header announces


def huge_ndim(path):
    raw = bytearray(gzip.decompress(path.read_bytes())[:64])
    raw[3] = 200  # 200 dimensions: a header longer than the file
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize(
    "damage, victim, message",
    [
        (truncate, IMAGES, r"is truncated"),
        (truncate, LABELS, r"is truncated"),
        (flip_bytes, IMAGES, r"cannot be read \(.*\)"),
        (flip_gzip_magic, LABELS, r"cannot be read \(.*gzip"),
        (wrong_idx_magic, IMAGES, r"not an IDX file \(bad magic number 0803"),
        (short_of_header, IMAGES, r"header announces 7840000 values, file holds 7839216"),
        (huge_ndim, LABELS, r"header announces 200 dimensions"),
    ],
    ids=["truncated-images", "truncated-labels", "flipped-bytes", "flipped-gzip-magic", "wrong-idx-magic",
         "short-of-header", "huge-ndim"],
)
def test_damaged_idx_file_is_named_with_what_to_do(real_folder, tmp_path, damage, victim, message):
    folder = copy_pair(real_folder, tmp_path)
    damage(folder / victim)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset("mnist", data_dir=tmp_path)
    text = str(info.value)
    assert str(folder / victim) in text
    assert "Replace it with an intact copy" in text and "SIGNATURES_DATA_DIR" in text


def test_same_file_not_gzipped_under_a_plain_name_reads_the_same(real_folder, tmp_path):
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((real_folder / LABELS).read_bytes()))
    assert np.array_equal(read_idx(plain), read_idx(real_folder / LABELS))
    gz_named_plain = tmp_path / "t10k-images-idx3-ubyte"  # gzip bytes under a name without .gz
    shutil.copyfile(real_folder / IMAGES, gz_named_plain)
    with pytest.raises(ValueError, match=r"not an IDX file \(bad magic number 1f8b"):
        read_idx(gz_named_plain)


def test_labels_file_swapped_for_the_images_file(real_folder, tmp_path):
    folder = copy_pair(real_folder, tmp_path)
    shutil.copyfile(real_folder / IMAGES, folder / LABELS)
    with pytest.raises(ValueError, match=r"do not match: .* got images \(10000, 28, 28\) and labels "
                                         r"\(10000, 28, 28\)") as info:
        load_dataset("mnist", data_dir=folder)
    assert str(folder / LABELS) in str(info.value) and "side by side" in str(info.value)


def test_labels_of_another_count(real_folder, tmp_path):
    folder = copy_pair(real_folder, tmp_path)
    raw = gzip.decompress((real_folder / LABELS).read_bytes())
    fewer = raw[:4] + (6000).to_bytes(4, "big") + raw[8:8 + 6000]  # a valid IDX file of 6000 labels
    (folder / LABELS).write_bytes(gzip.compress(fewer))
    with pytest.raises(ValueError, match=r"got images \(10000, 28, 28\) and labels \(6000,\)"):
        load_dataset("mnist", data_dir=folder)


def test_labels_out_of_range(real_folder, tmp_path):
    folder = copy_pair(real_folder, tmp_path)
    raw = bytearray(gzip.decompress((real_folder / LABELS).read_bytes()))
    raw[8 + 17] = 42
    (folder / LABELS).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match=r"holds label 42, but mnist labels must be in 0..9"):
        load_dataset("mnist", data_dir=folder)


def test_missing_folder_in_a_list_is_skipped_and_said(real_folder, tmp_path):
    nowhere = tmp_path / "nowhere"
    d = load_dataset("mnist", data_dir=os.pathsep.join([str(nowhere), str(real_folder.parent)]))
    assert d.counts()[1] == 1135
    assert f"skipped missing data folder(s) {nowhere}" in d.source
    sub = prepare(d, (1, 7), n_per_class=20, random_state=0)
    assert str(nowhere) in sub.info["source"]
    whole = load_dataset("mnist", data_dir=real_folder.parent)
    assert np.array_equal(d.labels, whole.labels) and "skipped" not in whole.source


def test_missing_folder_and_a_folder_without_the_dataset(tmp_path):
    nowhere, empty = tmp_path / "nowhere", tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataUnavailableError, match=r"no mnist IDX files") as info:
        load_dataset("mnist", data_dir=os.pathsep.join([str(empty), str(nowhere)]))
    text = str(info.value)
    assert f"skipped, not a folder: {nowhere}" in text and "--dataset digits" in text


def test_every_folder_missing_names_them_and_the_ways_out(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(ValueError, match="does not exist") as info:
        load_dataset("mnist", data_dir=os.pathsep.join([str(a), str(b)]))
    text = str(info.value)
    assert str(a) in text and str(b) in text and "--dataset digits" in text
