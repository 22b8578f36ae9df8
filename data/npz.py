"""Images stored as a numpy .npz archive of arrays ('images' or 'x', optional 'labels' or
'y'), read with allow_pickle=False."""
from __future__ import annotations

import os
import struct
import zipfile
import zlib

import numpy as np

from common.errors import MissingFileError, UserError

IMAGE_KEYS = ("images", "x")
LABEL_KEYS = ("labels", "y")


_LOCAL_HEADER = struct.Struct("<4s2sHH2s2sIIIHH")  # signature .. extra field's length
_DATA_DESCRIPTOR = 0x08  # general-purpose flag: CRC and sizes follow the data instead


def _check_local_header(fp, info: zipfile.ZipInfo) -> None:
  """The fields a member's local header repeats from the central directory must agree
  with it (zipfile reads them from the central directory only, so a damaged local copy
  would pass unnoticed)."""
  fp.seek(info.header_offset)
  raw = fp.read(_LOCAL_HEADER.size)
  if len(raw) != _LOCAL_HEADER.size:
    raise zipfile.BadZipFile(f"member {info.filename!r}: truncated local header")
  (sig, version, flags, method, _, _, crc, csize, usize, name_len,
   extra_len) = _LOCAL_HEADER.unpack(raw)
  fp.seek(name_len, 1)
  extra = fp.read(extra_len)
  dos_time = (info.date_time[3] << 11 | info.date_time[4] << 5 | info.date_time[5] // 2)
  dos_date = ((info.date_time[0] - 1980) << 9 | info.date_time[1] << 5
              | info.date_time[2])
  wrong = []
  if sig != b"PK\x03\x04":
    wrong.append("signature")
  if version != struct.pack("<H", info.extract_version):
    wrong.append("version needed")
  if flags != info.flag_bits:
    wrong.append("flags")
  if method != info.compress_type:
    wrong.append("compression method")
  if raw[10:14] != struct.pack("<HH", dos_time, dos_date):
    wrong.append("time stamp")
  if not flags & _DATA_DESCRIPTOR:
    if crc != info.CRC:
      wrong.append("CRC-32")
    if csize == 0xFFFFFFFF:  # ZIP64: the sizes are in the extra field (numpy's way)
      usize, csize = _zip64_sizes(extra)
    if (csize, usize) != (info.compress_size, info.file_size):
      wrong.append("sizes")
  if wrong:
    raise zipfile.BadZipFile(f"member {info.filename!r}: local header's "
                             f"{', '.join(wrong)} differ from the central directory")


def _zip64_sizes(extra: bytes) -> tuple[int | None, int | None]:
  """(uncompressed, compressed) size from a local header's ZIP64 extra record."""
  i = 0
  while i + 4 <= len(extra):
    tag, size = struct.unpack("<HH", extra[i:i + 4])
    if tag == 0x0001 and size >= 16 and i + 20 <= len(extra):
      return struct.unpack("<QQ", extra[i + 4:i + 20])
    i += 4 + size
  return None, None


def read_verified_npz(path: str) -> dict[str, np.ndarray]:
  """{name: array} of every array in the .npz at `path`, each member's CRC-32 checked.

  np.load does not make the checks run: each member is read here through zipfile to its
  end (where zipfile compares the CRC-32), after its local header is compared with the
  central directory. Object arrays are refused (allow_pickle=False). Raises UserError
  naming the file and what is wrong for a damaged or non-npz file.
  """
  arrays: dict[str, np.ndarray] = {}
  try:
    with zipfile.ZipFile(path) as z:
      for info in z.infolist():
        _check_local_header(z.fp, info)
      for info in z.infolist():
        with z.open(info) as f:
          if info.filename.endswith(".npy"):
            arrays[info.filename[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
          if f.read(1):
            # A member longer than its array, or not an array: read to its end so the
            # CRC-32 check runs, then refuse it only if it claims to be an array.
            while f.read(1 << 20):
              pass
            if info.filename.endswith(".npy"):
              raise UserError(f"{path}: member {info.filename!r} has bytes after its "
                              "array")
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
          zlib.error, struct.error) as e:
    if isinstance(e, UserError):
      raise
    raise UserError(f"{path}: damaged or not an .npz archive "
                    f"({e.__class__.__name__}: {e})") from None
  return arrays


def read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  """images uint8 (N, H, W, C) and labels int32 (N,) (-1 where the file has none).

  Integer images are accepted if every value is in 0..255; float images are refused
  (store pixels as uint8; the iterator does the conversion to [0, 1]).

  The archive holds the images under 'images' (or 'x'), uint8 NHWC (N, H, W, C) or
  grey-scale (N, H, W), and optionally integer labels under 'labels' (or 'y'), shape (N,).
  Arrays are read with allow_pickle=False: an .npz of object arrays is refused.
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"npz file {path!r} does not exist (expected an .npz with an "
                           f"array under {' or '.join(map(repr, IMAGE_KEYS))})")
  arrays = read_verified_npz(path)
  image_key = next((k for k in IMAGE_KEYS if k in arrays), None)
  if image_key is None:
    raise UserError(f"{path}: no image array; expected a key "
                    f"{' or '.join(map(repr, IMAGE_KEYS))}, found {sorted(arrays)}")
  images = arrays[image_key]
  label_key = next((k for k in LABEL_KEYS if k in arrays), None)
  labels = arrays[label_key] if label_key is not None else None
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise UserError(f"{path}: {image_key!r} has shape {images.shape}; expected "
                    "(N, H, W, C) or (N, H, W)")
  if images.shape[1] in (1, 3, 4) and images.shape[3] not in (1, 3, 4):
    raise UserError(f"{path}: {image_key!r} has shape {images.shape}, which looks like "
                    "NCHW; store NHWC (np.transpose(images, (0, 2, 3, 1)))")
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.integer):
      raise UserError(f"{path}: {image_key!r} is {images.dtype}; expected uint8 pixel "
                      "values 0..255")
    if images.size and (images.min() < 0 or images.max() > 255):
      raise UserError(f"{path}: {image_key!r} has values in [{images.min()}, "
                      f"{images.max()}]; expected 0..255")
    images = images.astype(np.uint8)
  n = images.shape[0]
  if labels is None:
    labels = np.full(n, -1, np.int32)
  else:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
      raise UserError(f"{path}: {label_key!r} is {labels.dtype} of shape {labels.shape}; "
                      f"expected integers of shape ({n},)")
    labels = labels.astype(np.int32)
  return images, labels
