"""Tests for restore.io.images: tiny synthetic images only."""

import os
import pickle
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from restore.io import images
from restore.io.images import (
    IMAGE_SUFFIXES,
    ImageError,
    Picture,
    is_image_path,
    read_image,
    write_image,
)

H, W = 12, 16  # non-square on purpose: rotations show up in the shape


def _u8(channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, channels), dtype=np.uint8)


def _u16(channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 65536, (H, W, channels), dtype=np.uint16)


def _srgb_icc():
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _gray_icc():
    # Pillow cannot synthesise a gray profile; patch the header colour space.
    # Good enough for a test that only checks the bytes travel through.
    icc = bytearray(_srgb_icc())
    icc[16:20] = b"GRAY"
    return bytes(icc)


def _exif(orientation=None, make=None):
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if make is not None:
        exif[0x010F] = make
    return exif.tobytes()


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".bmp", ".webp"])
def test_lossless_8bit_rgb_round_trip(tmp_path, suffix):
    raw = _u8()
    path = write_image(tmp_path / f"a{suffix}", raw.astype(np.float32) / 255)
    pic = read_image(path)
    assert pic.rgb.dtype == np.float32 and pic.rgb.shape == (H, W, 3)
    assert (pic.bit_depth, pic.gray, pic.alpha, pic.source) == (8, False, None, str(path))
    np.testing.assert_array_equal(np.round(pic.rgb * 255).astype(np.uint8), raw)
    # Channel order: what Pillow sees in the file is the RGB we wrote.
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), raw)


def test_jpeg_round_trip_is_close_and_8bit(tmp_path):
    smooth = np.linspace(0, 1, H * W * 3, dtype=np.float32).reshape(H, W, 3)
    path = write_image(tmp_path / "a.jpg", smooth, bit_depth=16)  # 16 quietly becomes 8
    pic = read_image(path)
    assert pic.bit_depth == 8 and pic.rgb.shape == (H, W, 3)
    assert np.abs(pic.rgb - smooth).max() < 0.05


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_round_trip_is_exact(tmp_path, suffix, channels):
    raw = _u16(channels)
    src = tmp_path / f"src{suffix}"
    cv2.imwrite(str(src), raw[..., [2, 1, 0, 3][:channels]])  # a "foreign" file, BGR(A) on disk
    pic = read_image(src)
    assert pic.bit_depth == 16 and not pic.gray
    np.testing.assert_array_equal(np.round(pic.rgb * 65535).astype(np.uint16), raw[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(np.round(pic.alpha * 65535).astype(np.uint16), raw[..., 3])
    else:
        assert pic.alpha is None

    out = write_image(tmp_path / f"out{suffix}", pic)  # bit depth taken from the Picture
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, cv2.imread(str(src), cv2.IMREAD_UNCHANGED))


def test_16bit_float_conversion_is_exact_for_every_value(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    path = write_image(tmp_path / "ramp.png", values.astype(np.float32) / 65535, gray=True, bit_depth=16)
    pic = read_image(path)
    assert pic.gray and pic.bit_depth == 16
    np.testing.assert_array_equal(np.round(pic.rgb[..., 1] * 65535).astype(np.uint16), values)


def test_writing_clips_and_rounds(tmp_path):
    x = np.zeros((H, W, 3), np.float32)
    x[0, :4, 0] = [-0.5, 1.5, 0.49 / 255, 0.51 / 255]
    x[1, 0, 0] = np.nan
    pic = read_image(write_image(tmp_path / "c.png", x))
    assert list(np.round(pic.rgb[0, :4, 0] * 255)) == [0, 255, 0, 1]
    assert pic.rgb[1, 0, 0] == 0


@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp"])
@pytest.mark.parametrize("bits", [8, 16])
def test_rgba_keeps_alpha(tmp_path, suffix, bits):
    raw = _u16(4) if bits == 16 else _u8(4)
    scale = 65535 if bits == 16 else 255
    path = write_image(tmp_path / f"a{suffix}", raw[..., :3] / scale, alpha=raw[..., 3] / scale, bit_depth=bits)
    pic = read_image(path)
    expect_bits = 8 if suffix == ".webp" else bits
    assert pic.bit_depth == expect_bits and pic.alpha is not None
    if expect_bits == bits:
        np.testing.assert_array_equal(np.round(pic.alpha * scale), raw[..., 3])
        np.testing.assert_array_equal(np.round(pic.rgb * scale), raw[..., :3])
    else:  # 16 -> 8 bits: within one 8-bit step
        assert np.abs(pic.alpha - raw[..., 3] / scale).max() <= 0.5 / 255 + 1e-6


def test_jpeg_drops_alpha(tmp_path):
    raw = _u8(4)
    pic = read_image(write_image(tmp_path / "a.jpg", raw[..., :3] / 255, alpha=raw[..., 3] / 255))
    assert pic.alpha is None and pic.rgb.shape == (H, W, 3)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("bits", [8, 16])
def test_gray_round_trip(tmp_path, suffix, bits):
    scale = 65535 if bits == 16 else 255
    raw = (_u16(1) if bits == 16 else _u8(1))[..., 0]
    src = tmp_path / f"src{suffix}"
    cv2.imwrite(str(src), raw)
    pic = read_image(src)
    assert pic.gray and pic.bit_depth == bits and pic.rgb.shape == (H, W, 3)
    for c in range(3):  # the single channel is replicated
        np.testing.assert_array_equal(np.round(pic.rgb[..., c] * scale), raw)

    out = write_image(tmp_path / f"out{suffix}", pic)
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.ndim == 2  # written as a single-channel file
    np.testing.assert_array_equal(back, raw)


def test_gray_from_colour_uses_luma(tmp_path):
    x = np.zeros((H, W, 3), np.float32)
    x[..., 1] = 1.0  # pure green
    out = write_image(tmp_path / "g.png", x, gray=True)
    assert Image.open(out).mode == "L"
    assert np.asarray(Image.open(out))[0, 0] == round(0.587 * 255)


@pytest.mark.parametrize("suffix,mode", [(".png", "L"), (".webp", "RGB"), (".bmp", "L"), (".jpg", "L")])
def test_2d_array_is_written_gray_where_possible(tmp_path, suffix, mode):
    x = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    out = write_image(tmp_path / f"g{suffix}", x)
    assert Image.open(out).mode == mode
    pic = read_image(out)
    assert pic.gray == (mode == "L") and np.abs(pic.rgb[..., 0] - x).max() < 0.02


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_gray_with_alpha(tmp_path, suffix):
    la = _u8(2)
    src = tmp_path / f"la{suffix}"
    Image.fromarray(la, "LA").save(src)
    pic = read_image(src)
    assert pic.gray and pic.alpha is not None
    np.testing.assert_array_equal(np.round(pic.rgb[..., 2] * 255), la[..., 0])
    np.testing.assert_array_equal(np.round(pic.alpha * 255), la[..., 1])
    assert Image.open(write_image(tmp_path / f"out{suffix}", pic)).mode == "LA"
    # 16-bit gray+alpha is stored as RGBA (OpenCV writes 1, 3 or 4 channels) but keeps the values.
    back = read_image(write_image(tmp_path / f"out16{suffix}", pic, bit_depth=16))
    assert back.bit_depth == 16 and not back.gray
    np.testing.assert_array_equal(back.rgb[..., 0], pic.rgb[..., 0])
    np.testing.assert_array_equal(back.alpha, pic.alpha)


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_16bit_gray_alpha_png(tmp_path):
    # Neither Pillow nor OpenCV writes 16-bit gray+alpha, so build the PNG by hand.
    la = _u16(2)
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in la)  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", W, H, 16, 4, 0, 0, 0)  # colour type 4: gray + alpha
    src = tmp_path / "la16.png"
    src.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )
    pic = read_image(src)
    assert pic.gray and pic.bit_depth == 16
    np.testing.assert_array_equal(np.round(pic.rgb * 65535), np.repeat(la[..., :1], 3, axis=2))
    np.testing.assert_array_equal(np.round(pic.alpha * 65535), la[..., 1])


def test_palette_with_transparency_gets_alpha(tmp_path):
    im = Image.new("P", (W, H), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (0, 0, W // 2, H))  # left half blue, right half red (transparent)
    src = tmp_path / "p.png"
    im.save(src, transparency=0)
    pic = read_image(src)
    assert not pic.gray and pic.alpha is not None
    assert pic.alpha[0, 0] == 1 and pic.alpha[0, -1] == 0
    np.testing.assert_array_equal(pic.rgb[0, 0], [0, 0, 1])


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    src = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(src, quality=95)  # red in CMYK
    pic = read_image(src)
    assert pic.rgb.shape == (H, W, 3) and not pic.gray and pic.icc_profile is None
    r, g, b = pic.rgb[H // 2, W // 2]
    assert r > 0.9 and g < 0.1 and b < 0.1


# --------------------------------------------------------------------------- metadata


def test_exif_orientation_6_rotates_jpeg(tmp_path):
    raw = np.zeros((H, W, 3), np.uint8)
    raw[:, : W // 2] = (255, 0, 0)  # left half red, right half blue
    raw[:, W // 2 :] = (0, 0, 255)
    src = tmp_path / "rot.jpg"
    Image.fromarray(raw).save(src, exif=_exif(orientation=6, make="TestCam"), quality=95)
    pic = read_image(src)
    assert pic.rgb.shape == (W, H, 3)  # rotated 90 degrees: height and width swap
    # Rotated clockwise, the left (red) half ends up on top.
    assert pic.rgb[1, H // 2, 0] > 0.9 and pic.rgb[-2, H // 2, 2] > 0.9
    # The EXIF we hand out says "upright" but keeps the other tags.
    exif = Image.Exif()
    exif.load(pic.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "TestCam"
    # So writing it back and reading again does not rotate twice.
    again = read_image(write_image(tmp_path / "out.jpg", pic))
    assert again.rgb.shape == (W, H, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path, orientation):
    raw = _u8()
    src = tmp_path / "o.png"
    Image.fromarray(raw).save(src, exif=_exif(orientation=orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(src)).convert("RGB"))
    pic = read_image(src)
    np.testing.assert_array_equal(np.round(pic.rgb * 255).astype(np.uint8), expected)


def test_orientation_applied_to_16bit_and_alpha(tmp_path):
    # The 16-bit path decodes with OpenCV, which ignores EXIF: we must rotate ourselves.
    raw = _u16(4)
    path = write_image(
        tmp_path / "r16.png", raw[..., :3] / 65535, alpha=raw[..., 3] / 65535, bit_depth=16, exif=_exif(orientation=6)
    )
    pic = read_image(path)
    assert pic.bit_depth == 16 and pic.rgb.shape == (W, H, 3) and pic.alpha.shape == (W, H)
    np.testing.assert_array_equal(np.round(pic.rgb * 65535), np.rot90(raw[..., :3], -1))
    np.testing.assert_array_equal(np.round(pic.alpha * 65535), np.rot90(raw[..., 3], -1))


@pytest.mark.parametrize("suffix,bits", [(".png", 8), (".png", 16), (".jpg", 8), (".webp", 8), (".tif", 8)])
def test_icc_profile_and_exif_survive_round_trip(tmp_path, suffix, bits):
    icc = _srgb_icc()
    exif = _exif(make="TestCam")
    x = _u8() / 255
    pic = read_image(write_image(tmp_path / f"a{suffix}", x, bit_depth=bits, icc_profile=icc, exif=exif))
    assert pic.icc_profile == icc
    if suffix != ".tif":  # TIFF tags are merged into the image directory, not kept as a block
        loaded = Image.Exif()
        loaded.load(pic.exif)
        assert loaded[0x010F] == "TestCam"
    # And a second generation keeps it too (Picture -> file -> Picture).
    assert read_image(write_image(tmp_path / f"b{suffix}", pic)).icc_profile == icc


def test_icc_profile_dropped_when_colour_space_does_not_match(tmp_path):
    x = _u8() / 255
    gray_out = read_image(write_image(tmp_path / "g.png", x, gray=True, icc_profile=_srgb_icc()))
    assert gray_out.icc_profile is None  # an RGB profile in a gray file would be invalid
    gray_icc = _gray_icc()
    kept = read_image(write_image(tmp_path / "g2.png", x, gray=True, icc_profile=gray_icc))
    assert kept.icc_profile == gray_icc


def test_keyword_arguments_override_picture(tmp_path):
    pic = read_image(write_image(tmp_path / "a.png", _u16() / 65535, bit_depth=16))
    assert pic.bit_depth == 16
    assert read_image(write_image(tmp_path / "b.png", pic, bit_depth=8)).bit_depth == 8


# --------------------------------------------------------------------------- read errors


def _assert_read_fails(path, reason_part):
    with pytest.raises(ImageError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert reason_part in info.value.reason
    assert info.value.path == path


def test_read_missing_file(tmp_path):
    _assert_read_fails(tmp_path / "nope.png", "no such file")


def test_read_directory(tmp_path):
    _assert_read_fails(tmp_path, "directory")


def test_read_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    _assert_read_fails(tmp_path / "empty.png", "empty")


def test_read_text_file_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    _assert_read_fails(tmp_path / "notes.png", "not a recognised image")


@pytest.mark.parametrize(
    "suffix,bits,size,keep",
    [
        (".png", 8, (H, W), 0.5),  # cut in half
        (".jpg", 8, (H, W), 0.5),  # a tiny JPEG is mostly header: this cuts the header
        (".jpg", 8, (64, 64), 0.75),  # this cuts the compressed scan data
        (".png", 16, (H, W), 0.5),  # 16-bit goes to OpenCV only after Pillow validated it
        (".tif", 8, (H, W), 0.5),
        (".tif", 16, (H, W), 0.5),
    ],
)
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's TIFF reader warns first
def test_read_truncated_file(tmp_path, suffix, bits, size, keep, capfd):
    noise = np.random.default_rng(1).random((*size, 3), dtype=np.float32)
    good = write_image(tmp_path / f"good{suffix}", noise, bit_depth=bits)
    data = good.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * keep)])
    _assert_read_fails(cut, "truncated or corrupt")
    assert capfd.readouterr().err == ""  # no decoder noise on stderr


def test_read_unsupported_format(tmp_path):
    Image.fromarray(_u8()).save(tmp_path / "anim.gif")
    _assert_read_fails(tmp_path / "anim.gif", "unsupported image format (GIF)")


def test_read_accepts_str_path(tmp_path):
    path = str(write_image(tmp_path / "a.png", _u8() / 255))
    assert read_image(path).source == path
    with pytest.raises(ImageError, match=r"^.*nope\.png: no such file$"):
        read_image(os.path.join(tmp_path, "nope.png"))


# --------------------------------------------------------------------------- write errors


def test_write_refuses_to_overwrite(tmp_path):
    path = write_image(tmp_path / "a.png", np.zeros((H, W, 3), np.float32))
    before = path.read_bytes()
    with pytest.raises(ImageError) as info:
        write_image(path, np.ones((H, W, 3), np.float32))
    assert str(info.value) == f"{path}: exists; refusing to overwrite"
    assert path.read_bytes() == before and _listing(tmp_path) == ["a.png"]
    write_image(path, np.ones((H, W, 3), np.float32), overwrite=True)
    assert read_image(path).rgb.min() == 1.0 and _listing(tmp_path) == ["a.png"]


def test_write_creates_missing_folders(tmp_path):
    path = write_image(tmp_path / "x" / "y" / "a.png", np.zeros((H, W, 3), np.float32))
    assert path.is_file()


@pytest.mark.parametrize("tail", ["a.png", "sub/a.png"])
def test_write_where_parent_is_a_file(tmp_path, tail):
    # Stands in for an unwritable folder: we run as root, where chmod cannot block writes.
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / "file.txt" / tail
    with pytest.raises(ImageError) as info:
        write_image(target, np.zeros((H, W, 3), np.float32))
    assert str(info.value).startswith(f"{target}: cannot create folder")
    assert _listing(tmp_path) == ["file.txt"]


def test_write_into_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
        with pytest.raises(ImageError, match="cannot write"):
            write_image(folder / "a.png", np.zeros((H, W, 3), np.float32))
        assert _listing(folder) == []
    finally:
        folder.chmod(0o700)


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images.os, "fsync", disk_full)
    with pytest.raises(ImageError, match="No space left on device"):
        write_image(tmp_path / "a.png", np.zeros((H, W, 3), np.float32))
    assert _listing(tmp_path) == []


def test_write_unknown_suffix(tmp_path):
    with pytest.raises(ImageError, match="cannot write '.xyz' files"):
        write_image(tmp_path / "a.xyz", np.zeros((H, W, 3), np.float32))
    assert _listing(tmp_path) == []


def test_write_rejects_bad_arrays(tmp_path):
    with pytest.raises(TypeError):
        write_image(tmp_path / "a.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError):
        write_image(tmp_path / "a.png", np.zeros((H, W, 5), np.float32))
    with pytest.raises(ValueError):
        write_image(tmp_path / "a.png", np.zeros((H, W, 3), np.float32), alpha=np.zeros((W, H)))
    with pytest.raises(ValueError):
        write_image(tmp_path / "a.png", np.zeros((H, W, 3), np.float32), bit_depth=12)
    assert _listing(tmp_path) == []


def test_written_file_has_normal_permissions(tmp_path):
    path = write_image(tmp_path / "a.png", np.zeros((H, W, 3), np.float32))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------- small API bits


def test_image_error_format_and_pickle():
    e = ImageError("photo.png", "truncated or corrupt image data")
    assert str(e) == "photo.png: truncated or corrupt image data"
    assert (e.path, e.reason) == ("photo.png", "truncated or corrupt image data")
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and isinstance(e2, ImageError)


def test_is_image_path():
    assert IMAGE_SUFFIXES == {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
    assert is_image_path("a/B.JPG") and is_image_path("x.tiff")
    assert not is_image_path("a.txt") and not is_image_path("png")


def test_picture_is_a_plain_dataclass():
    pic = Picture(rgb=np.zeros((2, 2, 3), np.float32), alpha=None, bit_depth=8, gray=False,
                  icc_profile=None, exif=None, source=None)
    assert pic.bit_depth == 8
