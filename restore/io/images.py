"""Full-fidelity still-image reading and writing.

Pixels travel through the app as float32 RGB in [0, 1]; this module is the
only place that knows about files, bit depths, channel orders and metadata.

Design:
* Reading always opens the file with Pillow first and decodes it fully.  That
  validates the data (truncation raises instead of yielding grey rows), and
  gives us EXIF orientation and the ICC profile.  Pillow squeezes 16-bit
  colour down to 8 bits, so 16-bit colour pixels are decoded a second time by
  OpenCV; by then the file is known to be sound, so OpenCV has nothing to
  complain about on stderr.
* Writing encodes to memory first, then writes a temporary file next to the
  target and renames it into place, so a failure never leaves partial output.

Limitations:
* 16-bit TIFF is written by OpenCV and carries no ICC profile or EXIF.
  16-bit PNG keeps both (we add the iCCP/eXIf chunks ourselves).
* 16-bit gray+alpha is written as 16-bit RGBA (OpenCV stores 1, 3 or 4 channels).
* TIFF EXIF tags are not handed out as a block on read (Pillow merges them
  into the TIFF directory), so Picture.exif is None for TIFF sources.
* An ICC profile whose colour space does not match the output (an RGB profile
  on a gray file, say) is left out rather than written into an invalid file.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from restore.io.publish import publish_new

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})

# Pillow format names we read (MPO is what Pillow calls many camera JPEGs).
_READ_FORMATS = frozenset({"PNG", "JPEG", "MPO", "TIFF", "BMP", "DIB", "WEBP"})

# Output format by suffix: (Pillow name, max bits, keeps alpha, keeps gray).
_WRITE_FORMATS = {
    ".png": ("PNG", 16, True, True),
    ".tif": ("TIFF", 16, True, True),
    ".tiff": ("TIFF", 16, True, True),
    ".jpg": ("JPEG", 8, False, True),
    ".jpeg": ("JPEG", 8, False, True),
    ".webp": ("WEBP", 8, True, False),  # WebP has no single-channel mode
    ".bmp": ("BMP", 8, False, True),  # 32-bit BMP alpha is poorly supported by viewers
}

# Leading bytes of PNG, JPEG, little/big-endian TIFF and BMP files.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
_ORIENTATION = 0x0112
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N"})


class ImageError(Exception):
    """A user-facing problem with an image file: ``"<path>: <reason>"``."""

    def __init__(self, path, reason):
        super().__init__(path, reason)  # both args, so the error pickles across processes
        self.path = path
        self.reason = reason

    def __str__(self):
        return f"{self.path}: {self.reason}"


@dataclass
class Picture:
    rgb: np.ndarray  # float32 HxWx3 in [0, 1], RGB, EXIF orientation applied
    alpha: np.ndarray | None = None  # float32 HxW in [0, 1]
    bit_depth: int = 8  # bits per channel of the source: 8 or 16
    gray: bool = False  # source had one colour channel (replicated into rgb)
    icc_profile: bytes | None = None
    exif: bytes | None = None  # raw EXIF block, orientation reset to 1
    source: str | None = None
    route: object = None  # routed restores: the RouteMap (restore.routing.router)
    routing_map: np.ndarray | None = None  # routed restores: subnet index per input pixel (uint8)


def is_image_path(path) -> bool:
    """True if the file name has an image suffix (the content is not checked)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


# --------------------------------------------------------------------------- reading


def read_image(path) -> Picture:
    """Read a still image into a :class:`Picture`; raise :class:`ImageError` on any problem."""
    p = Path(path)
    _check_is_file(path, p)
    with _open(path, p) as im:
        if im.format not in _READ_FORMATS:
            raise ImageError(path, f"unsupported image format ({im.format})")
        _load_fully(path, im)
        bits, gray = _stored_layout(path, p, im)
        icc = im.info.get("icc_profile") or None
        orientation, exif = _orientation_and_exif(im)
        if bits == 16 and not im.mode.startswith("I;16"):
            # 16-bit colour or gray+alpha: Pillow would have cut it to 8 bits.
            pixels, alpha = _decode_16bit(path, p, gray)
            gray = pixels.ndim == 2
        else:
            if im.mode == "CMYK":
                im, icc = _cmyk_to_rgb(im, icc)
            pixels, alpha, gray = _decode_with_pillow(path, im)

    rgb = np.repeat(pixels[..., None], 3, axis=2) if gray else pixels
    return Picture(
        rgb=_orient(rgb, orientation),
        alpha=None if alpha is None else _orient(alpha, orientation),
        bit_depth=bits,
        gray=gray,
        icc_profile=icc,
        exif=exif,
        source=os.fspath(path),
    )


def _check_is_file(path, p: Path) -> None:
    if not p.exists():
        raise ImageError(path, "no such file")
    if p.is_dir():
        raise ImageError(path, "is a directory, not an image file")
    if p.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")


def _open(path, p: Path) -> Image.Image:
    try:
        return Image.open(p)
    except UnidentifiedImageError:
        # A known signature means an image whose header got cut or damaged.
        reason = "truncated or corrupt image data" if _has_image_signature(p) else "not a recognised image file"
        raise ImageError(path, reason) from None
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"image too large to open safely ({e})") from None
    except OSError as e:
        if e.errno is None:  # raised by a format plugin about the data, not by the filesystem
            raise ImageError(path, "truncated or corrupt image data") from None
        raise ImageError(path, f"cannot open: {e.strerror}") from None
    except (SyntaxError, ValueError, EOFError):  # more plugin complaints about the data
        raise ImageError(path, "truncated or corrupt image data") from None


def _has_image_signature(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(12)
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _load_fully(path, im: Image.Image) -> None:
    try:
        im.load()
    except MemoryError:
        raise
    except Exception:  # Pillow plugins raise OSError, SyntaxError, ValueError, zlib.error, ...
        raise ImageError(path, "truncated or corrupt image data") from None


def _stored_layout(path, p: Path, im: Image.Image) -> tuple[int, bool]:
    """(bits per channel, single colour channel?) as stored in the file.

    Pillow's mode hides both for 16-bit data: 16-bit RGB opens as 8-bit "RGB",
    16-bit gray+alpha as "RGBA".  So PNG and TIFF headers are asked directly.
    """
    gray = im.mode in _GRAY_MODES
    bits = 8
    if im.format == "PNG":
        with open(p, "rb") as f:
            head = f.read(26)  # signature(8) length(4) b"IHDR"(4) width(4) height(4) depth(1) colour type(1)
        if head[12:16] == b"IHDR":
            bits, gray = head[24], head[25] in (0, 4)  # colour types 0 = gray, 4 = gray + alpha
    elif im.format == "TIFF":
        bits = im.tag_v2.get(258, 8)  # BitsPerSample: an int or one per channel
        bits = max(bits) if isinstance(bits, tuple) else bits
        gray = im.tag_v2.get(262) in (0, 1)  # PhotometricInterpretation: white/black is zero
    if bits > 16:
        raise ImageError(path, f"unsupported bit depth ({bits} bits per channel)")
    return (16 if bits > 8 else 8), gray


def _orientation_and_exif(im: Image.Image) -> tuple[int, bytes | None]:
    """EXIF orientation (1..8) and the raw EXIF block with orientation reset to 1."""
    raw = im.info.get("exif") or None
    try:
        exif = im.getexif()  # also covers TIFF tags and XMP orientation
        orientation = int(exif.get(_ORIENTATION, 1))
        if raw and orientation != 1:
            # We hand out upright pixels, so the metadata must say so too.
            exif[_ORIENTATION] = 1
            raw = exif.tobytes()
    except Exception:  # malformed EXIF is common in the wild; it must not block the pixels
        orientation = 1
    return (orientation if 1 <= orientation <= 8 else 1), raw


def _decode_16bit(path, p: Path, gray: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels HxW if gray else HxWx3 RGB, alpha or None) as float32, decoded by OpenCV."""
    # imdecode on bytes (not imread on the path) copes with any path encoding;
    # IMREAD_UNCHANGED keeps 16 bits and alpha but ignores EXIF orientation,
    # which read_image applies itself.
    data = cv2.imdecode(np.fromfile(p, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.ndim != 3 or data.shape[2] not in (2, 3, 4):
        raise ImageError(path, "cannot decode 16-bit pixel data")
    data = data.astype(np.float32) / 65535.0
    channels = data.shape[2]
    alpha = np.ascontiguousarray(data[..., -1]) if channels in (2, 4) else None
    if gray or channels == 2:  # gray+alpha may come back as BGRA with B = G = R
        return np.ascontiguousarray(data[..., 0]), alpha
    return np.ascontiguousarray(data[..., 2::-1]), alpha  # BGR(A) -> RGB


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, None]:
    """Convert CMYK to sRGB; the CMYK profile no longer describes the pixels, so it is dropped."""
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB"), None
        except Exception:  # broken or unusable profile: fall back to Pillow's naive conversion
            pass
    return im.convert("RGB"), None


def _decode_with_pillow(path, im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(pixels HxW or HxWx3, alpha or None, gray) as float32 in [0, 1]."""
    gray = im.mode in _GRAY_MODES
    if im.mode.startswith("I;16"):  # 16-bit gray: Pillow keeps all 16 bits here
        return np.asarray(im).astype(np.float32) / 65535.0, None, True
    if im.mode in ("I", "F") or im.mode.startswith(("I;", "F;")):
        raise ImageError(path, f"unsupported pixel format (Pillow mode {im.mode})")
    # Palette and RGB/L images may carry transparency in a tRNS chunk instead of a channel.
    has_alpha = im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
    data = np.asarray(im.convert(target)).astype(np.float32) / 255.0
    if not has_alpha:
        return data, None, gray
    colour = data[..., 0] if gray else data[..., :3]
    return np.ascontiguousarray(colour), np.ascontiguousarray(data[..., -1]), gray


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation to an HxW or HxWxC array (same result as ImageOps.exif_transpose)."""
    ops = {
        1: lambda x: x,
        2: lambda x: x[:, ::-1],  # mirror left-right
        3: lambda x: x[::-1, ::-1],  # rotate 180
        4: lambda x: x[::-1, :],  # mirror top-bottom
        5: lambda x: x.swapaxes(0, 1),  # transpose
        6: lambda x: np.rot90(x, -1),  # rotate 90 clockwise
        7: lambda x: x.swapaxes(0, 1)[::-1, ::-1],  # transverse
        8: lambda x: np.rot90(x, 1),  # rotate 90 counter-clockwise
    }
    return np.ascontiguousarray(ops[orientation](a))


# --------------------------------------------------------------------------- writing


def write_image(
    path,
    picture_or_rgb,
    *,
    alpha=None,
    bit_depth=None,
    gray=None,
    icc_profile=None,
    exif=None,
    overwrite=False,
) -> Path:
    """Write a Picture or an HxWx3 float array in [0, 1]; the suffix picks the format.

    Keyword arguments left as None come from the Picture when one is given,
    otherwise default to 8-bit colour without alpha or metadata.  Formats that
    cannot hold what was asked for degrade quietly: 16-bit becomes 8-bit for
    JPEG/WebP/BMP, alpha is dropped for JPEG/BMP, gray becomes RGB for WebP.
    Returns the written path; raises ImageError if it cannot be written.
    """
    p = Path(path)
    fmt, max_bits, keeps_alpha, keeps_gray = _output_format(path, p)
    if isinstance(picture_or_rgb, Picture):
        pic = picture_or_rgb
        rgb = pic.rgb
        alpha = pic.alpha if alpha is None else alpha
        bit_depth = pic.bit_depth if bit_depth is None else bit_depth
        gray = pic.gray if gray is None else gray
        icc_profile = pic.icc_profile if icc_profile is None else icc_profile
        exif = pic.exif if exif is None else exif
    else:
        rgb = picture_or_rgb
    bit_depth = 8 if bit_depth is None else int(bit_depth)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, not {bit_depth}")
    bits = min(bit_depth, max_bits)
    if gray is None:  # an HxW array is gray unless told otherwise
        gray = np.ndim(rgb) == 2 or (np.ndim(rgb) == 3 and np.shape(rgb)[2] == 1)
    gray = bool(gray) and keeps_gray
    planes = _planes(rgb, alpha if keeps_alpha else None, gray)
    icc_profile = icc_profile if _profile_fits(icc_profile, gray) else None

    if not overwrite and p.exists():  # fail before doing the encoding work
        raise ImageError(path, "exists; refusing to overwrite")
    if p.is_dir():
        raise ImageError(path, "is a directory")
    data = _encode(path, fmt, planes, bits, icc_profile, exif)
    _write_atomically(path, p, data, overwrite)
    return p


def _output_format(path, p: Path):
    suffix = p.suffix.lower()
    if suffix not in _WRITE_FORMATS:
        known = ", ".join(sorted(_WRITE_FORMATS))
        raise ImageError(path, f"cannot write '{suffix or p.name}' files (use one of {known})")
    return _WRITE_FORMATS[suffix]


def _planes(rgb, alpha, gray: bool) -> np.ndarray:
    """Float channels to store: HxW (gray), HxWx2 (gray+alpha), HxWx3 or HxWx4."""
    rgb = np.asarray(rgb)
    if not np.issubdtype(rgb.dtype, np.floating):
        raise TypeError(f"expected a float image in [0, 1], got dtype {rgb.dtype}")
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        rgb = rgb[..., 0]
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {rgb.shape}")
    if gray:
        same = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        # Replicated gray goes back exactly; real colour is reduced with Rec.601 luma.
        channels = [rgb[..., 0] if same else rgb @ np.array([0.299, 0.587, 0.114], dtype=rgb.dtype)]
    else:
        channels = [rgb[..., i] for i in range(3)]
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha shape {alpha.shape} does not match image {rgb.shape[:2]}")
        channels.append(alpha)
    return channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)


def _to_int(x: np.ndarray, bits: int) -> np.ndarray:
    """round(clip(x, 0, 1) * maxval), NaN -> 0; in place on one float copy (frames can be large)."""
    y = np.array(x, dtype=np.float32)
    np.nan_to_num(y, copy=False, nan=0.0)
    np.clip(y, 0.0, 1.0, out=y)
    y *= 255 if bits == 8 else 65535
    np.rint(y, out=y)
    return y.astype(np.uint8 if bits == 8 else np.uint16)


def _profile_fits(icc: bytes | None, gray: bool) -> bool:
    """An ICC profile must match the colour space of the file (bytes 16-19 of the header)."""
    if not icc or len(icc) < 20:
        return False
    return icc[16:20] == (b"GRAY" if gray else b"RGB ")


def _encode(path, fmt: str, planes: np.ndarray, bits: int, icc: bytes | None, exif: bytes | None) -> bytes:
    pixels = _to_int(planes, bits)
    try:
        if bits == 16:
            return _encode_16bit(fmt, pixels, icc, exif)
        return _encode_with_pillow(fmt, pixels, icc, exif)
    except (OSError, ValueError, cv2.error) as e:
        raise ImageError(path, f"cannot encode as {fmt}: {e}") from None


def _encode_with_pillow(fmt: str, pixels: np.ndarray, icc, exif) -> bytes:
    im = Image.fromarray(pixels)  # uint8 HxW / x2 / x3 / x4 -> L / LA / RGB / RGBA
    options = {
        "PNG": {},
        "TIFF": {"compression": "tiff_lzw"},
        # 4:4:4 chroma: restored detail should not be thrown away by subsampling.
        "JPEG": {"quality": 95, "subsampling": 0},
        # Lossless, and exact: keep the colour under fully transparent pixels.
        "WEBP": {"lossless": True, "exact": True},
        "BMP": {},
    }[fmt]
    if icc and fmt != "BMP":
        options["icc_profile"] = icc
    if exif and fmt != "BMP":
        options["exif"] = exif
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def _encode_16bit(fmt: str, pixels: np.ndarray, icc, exif) -> bytes:
    # Pillow has no 16-bit RGB mode, so OpenCV encodes.  OpenCV stores 1, 3 or
    # 4 channels, so 16-bit gray+alpha is written as RGBA.
    if pixels.ndim == 3 and pixels.shape[2] == 2:
        pixels = pixels[..., [0, 0, 0, 1]]
    if pixels.ndim == 3:
        pixels = np.ascontiguousarray(pixels[..., [2, 1, 0, 3][: pixels.shape[2]]])  # RGB(A) -> BGR(A)
    ok, buf = cv2.imencode(".png" if fmt == "PNG" else ".tiff", pixels)
    if not ok:
        raise ValueError("OpenCV could not encode the image")
    data = buf.tobytes()
    # PNG metadata chunks are simple enough to add ourselves.  16-bit TIFF
    # loses ICC/EXIF: adding tags would mean rewriting the TIFF directory.
    return _png_add_metadata(data, icc, exif) if fmt == "PNG" else data


def _png_add_metadata(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP / eXIf chunks right after IHDR (both must precede IDAT)."""
    chunks = b""
    if icc:
        # iCCP: profile name, NUL, compression method 0 (zlib), compressed profile.
        chunks += _png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc))
    if exif:
        # eXIf holds the bare TIFF-structured block, without JPEG's "Exif\0\0" prefix.
        chunks += _png_chunk(b"eXIf", exif.removeprefix(b"Exif\0\0"))
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, length, type, IHDR data, CRC
    if png[12:16] != b"IHDR":
        raise ValueError("encoder produced an unexpected PNG layout")
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_atomically(path, p: Path, data: bytes, overwrite: bool) -> None:
    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ImageError(path, f"cannot create folder {parent}: a file is in the way") from None
    except OSError as e:
        raise ImageError(path, f"cannot create folder {parent}: {e.strerror or e}") from None

    # Hidden temp name in the same folder, so the final rename stays on one filesystem.
    tmp = parent / f".{p.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        # os.open with 0o666 lets the umask decide permissions, like a normal file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, p)
        else:
            _publish_without_clobbering(path, tmp, p)
    except OSError as e:
        raise ImageError(path, f"cannot write: {e.strerror or e}") from None
    finally:
        # Still there after a failure or a hard-link publish; gone after a rename.
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _publish_without_clobbering(path, tmp: Path, p: Path) -> None:
    try:
        publish_new(tmp, p)
    except FileExistsError:
        raise ImageError(path, "exists; refusing to overwrite") from None
