"""HDF5 cache of a dataset at one input size: JPEG bytes + COCO RLE masks in flat arrays.

Layout (``M`` images, ``K`` instances; ``*_offsets`` have ``M + 1`` / ``K + 1`` entries,
record ``i`` is ``data[offsets[i]:offsets[i + 1]]``):

* per image: ``image_ids`` int64 [M], ``file_names`` str [M], ``orig_hw`` int32 [M, 2] (original
  size), ``cache_hw`` int32 [M, 2] (stored size, long side = ``attrs["size"]``), ``scales`` float64
  [M] (cache pixels per original pixel), ``has_annotations`` bool [M], ``jpeg`` uint8 flat +
  ``jpeg_offsets``, ``inst_offsets`` int64 [M + 1] into the per-instance arrays;
* per instance: ``classes`` int64 [K], ``boxes`` float32 [K, 4] (xyxy cache pixels, from the mask),
  ``rle`` uint8 flat (compressed COCO counts) + ``rle_offsets``, ``attr_ids`` int32 flat (raw sparse
  attribute ids) + ``attr_offsets``.

Images are resized once (aspect kept, area interpolation when shrinking, no padding). The file is
written as ``PATH.tmp`` and renamed on success; ``attrs["complete"] = True`` is written last, and
readers refuse a file without it.
"""

from __future__ import annotations

import logging
import os
from multiprocessing import Pool
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import h5py
import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

from effdetmask.data.image_io import read_image_rgb
from effdetmask.data.mapper import annotation_to_mask, letterbox_size, masks_to_boxes, resize_image
from effdetmask.data.validation import DatasetIssue, Reason, SkipReport

logger = logging.getLogger(__name__)

__all__ = ["build_cache", "verify_cache", "CachedDataset", "CacheError", "encode_record",
           "CACHE_VERSION"]

CACHE_VERSION = 1
JPEG_QUALITY = 95
_FLUSH_EVERY = 64  # records buffered by the writer between HDF5 appends


class CacheError(RuntimeError):
    """A cache file that cannot be used (missing, incomplete, wrong version); names the file."""


def encode_record(item: Dict[str, Any], size: int) -> Dict[str, Any]:
    """Dataset dict -> cache record in compact form (JPEG bytes, RLE count strings).

    Raises:
        DatasetIssue: unreadable image or unusable annotation, naming the file.
    """
    h, w = int(item["height"]), int(item["width"])
    image = read_image_rgb(item["file_name"], expected_hw=(h, w))
    ch, cw, scale = letterbox_size(h, w, size)
    small = resize_image(image, ch, cw)
    ok, jpeg = cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DatasetIssue(item["file_name"], "JPEG encoding failed", reason=Reason.CORRUPT_IMAGE)
    anns = [a for a in item.get("annotations", ()) if not a.get("iscrowd", 0)]
    masks = np.zeros((len(anns), ch, cw), np.uint8)
    for i, a in enumerate(anns):
        try:
            masks[i] = annotation_to_mask(a["segmentation"], h, w, ch, cw)
        except (ValueError, TypeError, KeyError) as e:
            raise DatasetIssue(item["file_name"], f"annotation {i}: {e}",
                               reason=Reason.BAD_RECORD) from e
    boxes = masks_to_boxes(masks)
    keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    rles = [mask_util.encode(np.asfortranarray(masks[k]))["counts"] for k in keep]
    return dict(image_id=int(item["image_id"]), file_name=str(item["file_name"]), orig_hw=(h, w),
                cache_hw=(ch, cw), scale=scale, has_annotations="annotations" in item,
                jpeg=jpeg.tobytes(), rles=rles, boxes=boxes[keep],
                classes=[int(anns[k]["category_id"]) for k in keep],
                attr_ids=[[int(x) for x in anns[k].get("attribute_ids", ())] for k in keep])


class _Encoder:
    """Picklable worker function; returns ``(record, None)`` or ``(None, issue)`` when skipping."""

    def __init__(self, size: int, skip_invalid: bool) -> None:
        self.size, self.skip_invalid = size, skip_invalid

    def __call__(self, item: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[Any]]:
        try:
            return encode_record(item, self.size), None
        except DatasetIssue as e:
            if not self.skip_invalid:
                raise
            return None, (e.reason, str(e))


class _Writer:
    """Appends records to resizable flat datasets; the only process that touches the file."""

    _SPECS = dict(image_ids=("i8", ()), orig_hw=("i4", (2,)), cache_hw=("i4", (2,)),
                  scales=("f8", ()), has_annotations=("?", ()), jpeg=("u1", ()),
                  classes=("i8", ()), boxes=("f4", (4,)), rle=("u1", ()), attr_ids=("i4", ()),
                  jpeg_offsets=("i8", ()), inst_offsets=("i8", ()), rle_offsets=("i8", ()),
                  attr_offsets=("i8", ()))

    def __init__(self, f: h5py.File) -> None:
        self.f = f
        for name, (dt, shape) in self._SPECS.items():
            # small chunks: a few-image cache stays small; reads are per record anyway
            chunk = 1 << 16 if name in ("jpeg", "rle") else 512
            f.create_dataset(name, (0,) + shape, dtype=dt, maxshape=(None,) + shape,
                             chunks=(chunk,) + shape)
        f.create_dataset("file_names", (0,), dtype=h5py.string_dtype(), maxshape=(None,),
                         chunks=(512,))
        for name in ("jpeg_offsets", "inst_offsets", "rle_offsets", "attr_offsets"):
            self._append(name, np.zeros(1, np.int64))
        self.buf: List[Dict[str, Any]] = []

    def _append(self, name: str, values: np.ndarray) -> None:
        d = self.f[name]
        n = d.shape[0]
        d.resize(n + len(values), axis=0)
        if len(values):
            d[n:] = values

    def add(self, rec: Dict[str, Any]) -> None:
        self.buf.append(rec)
        if len(self.buf) >= _FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        b, self.buf = self.buf, []
        if not b:
            return
        names = ("jpeg_offsets", "inst_offsets", "rle_offsets", "attr_offsets")
        last = {k: int(self.f[k][-1]) for k in names}
        rles = [r for rec in b for r in rec["rles"]]
        attrs = [a for rec in b for a in rec["attr_ids"]]
        cum = lambda xs, base: base + np.cumsum([len(x) for x in xs], dtype=np.int64)  # noqa: E731
        self._append("image_ids", np.array([r["image_id"] for r in b], np.int64))
        self._append("file_names", np.array([r["file_name"] for r in b], dtype=object))
        self._append("orig_hw", np.array([r["orig_hw"] for r in b], np.int32))
        self._append("cache_hw", np.array([r["cache_hw"] for r in b], np.int32))
        self._append("scales", np.array([r["scale"] for r in b], np.float64))
        self._append("has_annotations", np.array([r["has_annotations"] for r in b], bool))
        self._append("jpeg", np.frombuffer(b"".join(r["jpeg"] for r in b), np.uint8))
        self._append("jpeg_offsets", cum([r["jpeg"] for r in b], last["jpeg_offsets"]))
        self._append("inst_offsets", cum([r["rles"] for r in b], last["inst_offsets"]))
        self._append("classes", np.array([c for r in b for c in r["classes"]], np.int64))
        self._append("boxes", np.concatenate([r["boxes"] for r in b]).reshape(-1, 4))
        self._append("rle", np.frombuffer(b"".join(rles), np.uint8))
        self._append("rle_offsets", cum(rles, last["rle_offsets"]))
        self._append("attr_ids", np.array([x for a in attrs for x in a], np.int32))
        self._append("attr_offsets", cum(attrs, last["attr_offsets"]))


def build_cache(dataset_dicts: Sequence[Dict[str, Any]], output: str, size: int, *,
                dataset_name: str = "", workers: int = 0, skip_invalid: bool = False,
                progress: bool = True) -> SkipReport:
    """Encode every dataset dict at ``size`` into the HDF5 file ``output`` (atomically).

    Args:
        dataset_dicts: detectron2-style dicts (``docs/interfaces.md``).
        output: final path; the build writes ``output + ".tmp"`` and renames it on success.
        size: long side of the cached images (the model's ``INPUT.SIZE``).
        workers: encoder processes (0 = in this process); records keep the input order.
        skip_invalid: skip and count bad images/records instead of failing on the first.
    Returns:
        the report of skipped records.
    """
    report = SkipReport(dataset_name or output)
    tmp = output + ".tmp"
    encoder = _Encoder(size, skip_invalid)
    pool = Pool(workers) if workers > 0 else None
    try:
        results: Iterable = (pool.imap(encoder, dataset_dicts, chunksize=4) if pool
                             else map(encoder, dataset_dicts))
        with h5py.File(tmp, "w") as f:
            f.attrs.update(version=CACHE_VERSION, size=size, dataset=dataset_name, complete=False)
            writer = _Writer(f)
            for rec, issue in tqdm(results, total=len(dataset_dicts), disable=not progress,
                                   desc=f"cache {dataset_name or output}", unit="img"):
                if issue is not None:
                    report.add(*issue)
                else:
                    writer.add(rec)
            writer.flush()
            f.attrs["num_images"] = f["image_ids"].shape[0]
            f.flush()
            f.attrs["complete"] = True  # last: a crash before this leaves an incomplete file
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        if pool is not None:
            pool.terminate()
    return report


def open_cache(path: str) -> h5py.File:
    """Open a finished cache read-only, or raise :class:`CacheError` naming the file."""
    if not os.path.isfile(path):
        raise CacheError(f"{path}: cache file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CacheError(f"{path}: not a readable HDF5 file ({e})") from e
    if not bool(f.attrs.get("complete", False)):
        f.close()
        raise CacheError(f"{path}: cache is incomplete (interrupted build?); rebuild it")
    if int(f.attrs.get("version", -1)) != CACHE_VERSION:
        f.close()
        raise CacheError(f"{path}: cache version {f.attrs.get('version')} != {CACHE_VERSION}")
    return f


class CachedDataset:
    """Random access to cache records, each a dict the :class:`DatasetMapper` understands.

    A record has ``file_name``, ``image_id``, ``height``/``width`` (original), ``scale`` (cache px
    per original px), ``image`` (uint8 ``[h, w, 3]`` RGB at cache resolution) and, for annotated
    images, ``annotations``: dicts with ``segmentation`` (COCO RLE at cache resolution),
    ``category_id``, ``attribute_ids`` and ``bbox_xyxy`` (cache pixels).

    The HDF5 file is opened lazily in each process (h5py handles must not cross a fork) and the
    object pickles without it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        with open_cache(path) as f:
            self.size = int(f.attrs["size"])
            self._index = {k: f[k][:] for k in ("jpeg_offsets", "inst_offsets", "rle_offsets",
                                                "attr_offsets", "cache_hw")}
            self._len = int(f["image_ids"].shape[0])
        self._file: Optional[h5py.File] = None

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_file": None}

    def _f(self) -> h5py.File:
        if self._file is None:
            self._file = open_cache(self.path)
        return self._file

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if not 0 <= i < self._len:
            raise IndexError(i)
        f, ix = self._f(), self._index
        name = f["file_names"][i]
        name = name.decode() if isinstance(name, bytes) else str(name)
        where = f"{self.path}: record {i} ({name})"
        jpeg = f["jpeg"][ix["jpeg_offsets"][i]:ix["jpeg_offsets"][i + 1]]
        image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        ch, cw = (int(v) for v in ix["cache_hw"][i])
        if image is None or image.shape[:2] != (ch, cw):
            raise CacheError(f"{where}: stored JPEG does not decode to {cw}x{ch}")
        h, w = (int(v) for v in f["orig_hw"][i])
        rec: Dict[str, Any] = dict(file_name=name, image_id=int(f["image_ids"][i]), height=h,
                                   width=w, scale=float(f["scales"][i]),
                                   image=np.ascontiguousarray(image[..., ::-1]))
        if bool(f["has_annotations"][i]):
            k0, k1 = int(ix["inst_offsets"][i]), int(ix["inst_offsets"][i + 1])
            ro, ao = ix["rle_offsets"], ix["attr_offsets"]
            rle = f["rle"][ro[k0]:ro[k1]].tobytes() if k1 > k0 else b""
            attrs = f["attr_ids"][ao[k0]:ao[k1]] if k1 > k0 else np.zeros(0, np.int32)
            classes, boxes = f["classes"][k0:k1], f["boxes"][k0:k1]
            rec["annotations"] = [
                dict(segmentation={"size": [ch, cw],
                                   "counts": rle[ro[k] - ro[k0]:ro[k + 1] - ro[k0]]},
                     category_id=int(classes[k - k0]), bbox_xyxy=boxes[k - k0].tolist(),
                     attribute_ids=attrs[ao[k] - ao[k0]:ao[k + 1] - ao[k0]].tolist(), iscrowd=0)
                for k in range(k0, k1)]
        return rec


def verify_cache(path: str) -> List[str]:
    """Re-read every record: JPEG decodes to its size, RLE sizes, box == mask box, offsets/counts.

    Returns:
        problems found (empty = the cache is sound); each message names the record.
    """
    problems: List[str] = []
    with open_cache(path) as f:
        m = f["image_ids"].shape[0]
        k = f["classes"].shape[0]
        for name, n, data in (("jpeg_offsets", m, "jpeg"), ("inst_offsets", m, None),
                              ("rle_offsets", k, "rle"), ("attr_offsets", k, "attr_ids")):
            off = f[name][:]
            end = f[data].shape[0] if data else k
            if len(off) != n + 1 or off[0] != 0 or off[-1] != end or (np.diff(off) < 0).any():
                problems.append(f"{path}: {name} inconsistent with {data or 'classes'}")
        if int(f.attrs.get("num_images", -1)) != m or f["boxes"].shape[0] != k:
            problems.append(f"{path}: counts disagree (num_images / boxes vs classes)")
    if problems:
        return problems
    ds = CachedDataset(path)
    for i in range(len(ds)):
        try:
            rec = ds[i]
        except Exception as e:  # report every bad record, not just the first
            problems.append(str(e))
            continue
        ch, cw = rec["image"].shape[:2]
        for j, ann in enumerate(rec.get("annotations", ())):
            where = f"{path}: record {i} ({rec['file_name']}) instance {j}"
            try:
                mask = mask_util.decode(ann["segmentation"])
            except Exception as e:
                problems.append(f"{where}: RLE does not decode ({e})")
                continue
            if mask.shape != (ch, cw) or not 0 <= ann["category_id"] < 46:
                problems.append(f"{where}: mask {mask.shape} / class {ann['category_id']} invalid")
            elif not np.array_equal(masks_to_boxes(mask[None])[0], np.float32(ann["bbox_xyxy"])):
                problems.append(f"{where}: stored box {ann['bbox_xyxy']} != mask box")
    return problems
