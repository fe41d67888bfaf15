"""DICOM files written here with pydicom for the reader's tests (nothing is downloaded)."""

import struct

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def dataset(stored: np.ndarray, *, bits_stored: int = 16, signed: bool = False,
            photometric: str = "MONOCHROME2", transfer_syntax=ExplicitVRLittleEndian) -> Dataset:
    """A CR dataset holding ``stored`` (H, W) or (F, H, W) in 16 allocated bits.

    Signed values are written with their bits above ``bits_stored`` cleared, as a modality
    does, so the reader must sign-extend; unsigned ones as given (high bits may carry junk).
    """
    stored = np.asarray(stored)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    words = stored.astype(np.int64) & (2**bits_stored - 1 if signed else 0xFFFF)
    ds.PixelData = words.astype("<u2").tobytes()
    return ds


def lut_item(first_mapped: int, table, bits: int) -> Dataset:
    """A VOI/Modality LUT sequence item; LUT Data as OW words (what modalities write)."""
    item = Dataset()
    item.LUTDescriptor = [len(table), first_mapped, bits]
    item.add_new(0x00283006, "OW", np.asarray(table, "<u2").tobytes())
    return item


def write(ds: Dataset, path, *, preamble: bytes | None = None) -> None:
    """Writes a DICOM file with its 128-byte preamble and "DICM" (``preamble`` replaces the
    zero preamble) or, with ``preamble=b""``, a bare dataset without preamble or file meta."""
    if preamble == b"":
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
        return
    ds.save_as(path, enforce_file_format=True)
    if preamble is not None:
        data = bytearray(open(path, "rb").read())
        data[:128] = preamble.ljust(128, b"\0")
        open(path, "wb").write(bytes(data))


def tiff_preamble(rows: int, columns: int, pixel_offset: int) -> bytes:
    """A 128-byte little-endian TIFF header whose one strip is the DICOM pixel data: what makes
    Pillow open such a DICOM as a 16-bit TIFF (the trap the reader must avoid)."""
    tags = [(256, 3, 1, columns), (257, 3, 1, rows), (258, 3, 1, 16), (259, 3, 1, 1),
            (262, 3, 1, 1), (273, 4, 1, pixel_offset), (277, 3, 1, 1), (278, 3, 1, rows),
            (279, 4, 1, rows * columns * 2)]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    header = b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    assert len(header) <= 128
    return header


def write_tiff_looking(ds: Dataset, path) -> None:
    """A DICOM file whose preamble is a valid TIFF pointing at its pixel data."""
    ds.save_as(path, enforce_file_format=True)
    size = len(open(path, "rb").read())
    pixel_offset = size - len(ds.PixelData)  # PixelData is the last element
    write(ds, path, preamble=tiff_preamble(ds.Rows, ds.Columns, pixel_offset))


def read_back(path) -> Dataset:
    return pydicom.dcmread(path, force=True)
