"""Robust decoding: every mode becomes 8-bit RGB in display orientation; bad files name themselves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ada_utils.data.images import ImageDecodeError, ImageListDataset, load_image, load_images, save_jpeg


def _rgb(seed: int = 0, size: tuple[int, int] = (8, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(_rgb()[..., 0], mode="L").save(tmp_path / "g.png")
    arr = np.asarray(load_image(tmp_path / "g.png"))
    assert arr.shape == (6, 8, 3) and arr.dtype == np.uint8
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == _rgb()[..., 0]).all()


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "p.png")), np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    out = np.asarray(load_image(tmp_path / "pt.png"))
    transparent = np.asarray(pal) == 0
    assert transparent.any() and (out[transparent] == 255).all()


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    rgba[2:, :2, 3] = 128  # half transparent: midway between red and white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    assert (out[:2] == [200, 0, 0]).all()
    assert (out[2:, 2:] == 255).all()
    assert np.allclose(out[2:, :2], [(200 * 128 + 255 * 127) / 255, 127, 127], atol=2)
    Image.fromarray(rgba[..., [0, 3]], mode="LA").save(tmp_path / "la.png")
    assert (np.asarray(load_image(tmp_path / "la.png"))[2:, 2:] == 255).all()


def test_cmyk_jpeg_and_16_bit_png(tmp_path):
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    out = load_image(tmp_path / "c.jpg")
    assert out.mode == "RGB" and np.abs(np.asarray(out).astype(int) - _rgb()).mean() < 12
    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "i16.png")
    arr = np.asarray(load_image(tmp_path / "i16.png"))
    assert arr.shape == (8, 8, 3)
    assert np.array_equal(arr[..., 0], np.rint(ramp / 65535 * 255).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    src = Image.fromarray(_rgb(size=(6, 4)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src.save(tmp_path / "r.png", exif=exif.tobytes())
    out = load_image(tmp_path / "r.png")
    assert out.size == (4, 6)
    assert np.array_equal(np.asarray(out), np.asarray(src.transpose(Image.Transpose.ROTATE_270)))


def test_corrupt_and_truncated_files_name_themselves(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    save_jpeg(Image.fromarray(_rgb(size=(64, 64))), tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    for name in ("junk.jpg", "cut.jpg", "absent.png"):
        with pytest.raises(ImageDecodeError, match=name):
            load_image(tmp_path / name)
        assert load_image(tmp_path / name, on_error="skip") is None
    images, failed = load_images([tmp_path / n for n in ("ok.jpg", "junk.jpg", "cut.jpg")], on_error="skip")
    assert len(images) == 1 and [p.name for p in failed] == ["junk.jpg", "cut.jpg"]


def test_save_jpeg_codec_and_dataset(tmp_path):
    paths = [save_jpeg(Image.fromarray(_rgb(s, (32, 32))), tmp_path / f"{s}.jpg") for s in range(3)]
    tables = [Image.open(p).quantization for p in paths]
    assert all(t == tables[0] for t in tables)
    ds = ImageListDataset(paths, transform=lambda im: np.asarray(im).shape)
    assert len(ds) == 3 and ds[1] == (32, 32, 3)
    assert ImageListDataset(paths)[0].mode == "RGB"
