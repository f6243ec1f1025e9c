"""ImageNet-style image folders (train/<class>/, val/<class>/) decoded with Pillow."""

import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from filterprune.cli import main
from filterprune.data.imagefolder import load_image_folder
from filterprune.errors import FilterpruneError
from filterprune.pipeline.config import parse_config
from filterprune.pipeline.session import prepare


def solid(color, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.fixture
def folder(tmp_path):
    """Classes 'blue' and 'red' (sorted: blue = 0), PNG and JPEG, several sizes and modes."""
    root = tmp_path / "images"
    for split, count in (("train", 3), ("val", 2)):
        for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = solid(color, (40 + 7 * i, 30 + 3 * i))
                image.save(root / split / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    half = Image.fromarray(np.concatenate([np.zeros((32, 32), np.uint8),
                                           np.full((32, 32), 255, np.uint8)], axis=1))
    half.save(root / "train" / "red" / "halves.png")  # 64 x 32 grayscale, left black
    (root / "train" / "red" / "notes.txt").write_text("not an image")
    return root


def test_reads_the_folder_resized_and_centre_cropped(folder):
    ds = load_image_folder(folder, image_size=16)
    assert ds.classes == ("blue", "red")
    assert ds.train_images.shape == (7, 3, 16, 16) and ds.test_images.shape == (4, 3, 16, 16)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert ds.test_labels.tolist() == [0, 0, 1, 1]
    blue = ds.train_images[0].float().mean(dim=(1, 2))
    assert blue[2] > 240 and blue[0] < 15  # JPEG is lossy: close to pure blue
    halves = ds.train_images[6]  # sorted file order: 0.jpg, 1.png, 2.jpg, halves.png
    # 64 x 32 -> 32 x 16, centre crop keeps columns 8..23: left half black, right half white.
    assert (halves[:, :, :7] == 0).all() and (halves[:, :, 9:] == 255).all()
    assert ds.in_channels == 3 and ds.image_size == 16


def test_a_session_takes_its_shapes_from_the_folder(folder):
    config = parse_config({"data": {"name": "imagefolder", "data_dir": str(folder),
                                    "image_size": 16}, "device": "cpu"})
    session = prepare(config, progress=False)
    assert session.spec.input_shape == (1, 3, 16, 16)
    assert session.dataset.num_classes == 2
    images, labels = next(iter(session.train_batches))
    assert images.shape[1:] == (3, 16, 16) and images.dtype.is_floating_point


@pytest.mark.parametrize("damage, message", [
    (lambda root: shutil.rmtree(root / "val"), "missing split folder 'val'"),
    (lambda root: (root / "train" / "red" / "2.jpg").write_bytes(b"garbage"), "cannot read image"),
    (lambda root: (root / "val" / "green").mkdir(), "'green' is not in the train split"),
    (lambda root: (root / "train" / "green").mkdir(), "'train/green' holds no images"),
    (lambda root: (root / "train" / "green").mkdir() or (root / "train" / "green" / "a.txt")
     .write_text("notes"), "'train/green' holds no images"),
])
def test_a_bad_folder_is_a_one_line_error(folder, damage, message):
    damage(folder)
    with pytest.raises(FilterpruneError, match=message):
        load_image_folder(folder, image_size=16)


def test_no_classes_or_no_root(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    with pytest.raises(FilterpruneError, match="no class folders"):
        load_image_folder(tmp_path)
    with pytest.raises(FilterpruneError, match="needs data.data_dir"):
        load_image_folder(None)


def test_cli_reports_a_bad_folder_in_one_line(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"name": "imagefolder",
                                               "data_dir": str(tmp_path / "nowhere")}}))
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing split folder 'train'" in err and len(err.splitlines()) == 1
