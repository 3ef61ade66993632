"""Reading the HDF5 cache (the layout is described in :mod:`effdetmask.data.hdf5_cache`, which
builds it): :func:`open_cache`, :class:`CachedDataset` (random access, every record checked on
read) and :func:`verify_cache` (every record at once).

The checks shared with the builder live here too: the record checksum (:func:`_record_crc`, the
writer's and reader's common view of a record's bytes) and the taxonomy check of class and
attribute ids (:func:`_id_problem`).
"""

from __future__ import annotations

import os
import zlib
from functools import lru_cache
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import cv2
import h5py
import numpy as np
import pycocotools.mask as mask_util

from effdetmask.data.taxonomy import NUM_CLASSES, load_taxonomy
from effdetmask.data.validation import Reason
from effdetmask.structures.masks import mask_to_box_xyxy

__all__ = ["open_cache", "verify_cache", "CachedDataset", "CacheError", "CACHE_VERSION"]

# 3: per-instance "attr_known" (attribute_ids_known: False = the attributes are unknown, not
#    "none"), included in the CRC-32. 2: per-record CRC-32 ("crc32"), class/attribute ids checked
#    on read. 1: no checksums.
CACHE_VERSION = 3
_REBUILD = "rebuild it with datasets/build_cache.py"
_OLD_VERSIONS = {1: "it has no per-record checksums",
                 2: "it does not record which instances' attributes are unknown"}


class CacheError(RuntimeError):
    """A cache file or record that cannot be used (missing, incomplete, wrong version, corrupt).

    The message names the file (and the record, for a bad record).
    """


@lru_cache(maxsize=1)
def _attribute_ids() -> FrozenSet[int]:
    return frozenset(load_taxonomy().attribute_ids)


def _id_problem(category_id: Any, attribute_ids: Any) -> Optional[Tuple[str, str]]:
    """``(reason, problem)`` when the class or an attribute id is not in the taxonomy, else None."""
    if (isinstance(category_id, (bool, np.bool_))
            or not isinstance(category_id, (int, np.integer))
            or not 0 <= category_id < NUM_CLASSES):
        return (Reason.UNKNOWN_CATEGORY,
                f"category id {category_id!r} is not a class id of the taxonomy "
                f"(0..{NUM_CLASSES - 1})")
    known = _attribute_ids()
    bad = [a for a in attribute_ids
           if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer))
           or int(a) not in known]
    if bad:
        return (Reason.UNKNOWN_ATTRIBUTE,
                f"attribute id(s) {[a.item() if hasattr(a, 'item') else a for a in bad]} "
                f"not in the taxonomy")
    return None


def _record_crc(image_id: int, file_name: str, orig_hw: Any, cache_hw: Any, scale: float,
                has_annotations: bool, jpeg: Any, classes: Any, boxes: Any, rle_lengths: Any,
                rle: Any, attr_lengths: Any, attr_ids: Any, attr_known: Any) -> int:
    """CRC-32 of one record's payload in a fixed byte layout (the writer's and reader's view)."""
    name = file_name.encode("utf-8", "surrogateescape")
    parts = (
        np.array([image_id, len(name), len(jpeg), len(classes)], "<i8"), name,
        np.asarray(orig_hw, "<i4"), np.asarray(cache_hw, "<i4"), np.asarray(scale, "<f8"),
        np.asarray(has_annotations, "u1"), np.ascontiguousarray(np.frombuffer(jpeg, np.uint8)),
        np.asarray(classes, "<i8"), np.asarray(boxes, "<f4").reshape(-1, 4),
        np.asarray(rle_lengths, "<i8"), np.ascontiguousarray(np.frombuffer(rle, np.uint8)),
        np.asarray(attr_lengths, "<i8"), np.asarray(attr_ids, "<i4"),
        np.asarray(attr_known, "u1"),
    )
    crc = 0
    for part in parts:
        crc = zlib.crc32(part if isinstance(part, bytes) else part.tobytes(), crc)
    return crc


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
        raise CacheError(f"{path}: cache is incomplete (interrupted build?); {_REBUILD}")
    version = int(f.attrs.get("version", -1))
    if version != CACHE_VERSION:
        f.close()
        why = f" ({_OLD_VERSIONS[version]})" if version in _OLD_VERSIONS else ""
        raise CacheError(f"{path}: cache format version {version}{why}, this code reads version "
                         f"{CACHE_VERSION}; {_REBUILD}")
    for name in ("crc32", "attr_known"):
        if name not in f:
            f.close()
            raise CacheError(f"{path}: cache has no {name!r} dataset; {_REBUILD}")
    return f


class CachedDataset:
    """Random access to cache records, each a dict the :class:`DatasetMapper` understands.

    A record has ``file_name``, ``image_id``, ``height``/``width`` (original), ``scale`` (cache px
    per original px), ``image`` (uint8 ``[h, w, 3]`` RGB at cache resolution) and, for annotated
    images, ``annotations``: dicts with ``segmentation`` (COCO RLE at cache resolution),
    ``category_id``, ``attribute_ids``, ``attribute_ids_known`` and ``bbox_xyxy`` (cache pixels).

    Every read checks the record's CRC-32 and its class/attribute ids; a bad record raises
    :class:`CacheError` naming the file, the record index and the image id (a ``MapDataset`` with
    ``skip_invalid`` skips and counts it).

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

    def _read(self, i: int) -> Dict[str, Any]:
        """The stored fields of record ``i``, unchecked; raises CacheError on bad offsets."""
        if not 0 <= i < self._len:
            raise IndexError(i)
        f, ix = self._f(), self._index
        name = f["file_names"][i]
        name = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else str(name)
        raw: Dict[str, Any] = dict(index=i, file_name=name, image_id=int(f["image_ids"][i]),
                                   orig_hw=f["orig_hw"][i], cache_hw=ix["cache_hw"][i],
                                   scale=float(f["scales"][i]),
                                   has_annotations=bool(f["has_annotations"][i]),
                                   crc32=int(f["crc32"][i]))
        raw["where"] = f"{self.path}: record {i} (image id {raw['image_id']}, {name})"
        j0, j1 = (int(v) for v in ix["jpeg_offsets"][i:i + 2])
        k0, k1 = (int(v) for v in ix["inst_offsets"][i:i + 2])
        ro, ao = ix["rle_offsets"], ix["attr_offsets"]
        if not (0 <= j0 <= j1 <= f["jpeg"].shape[0] and 0 <= k0 <= k1 <= f["classes"].shape[0]
                and k1 < len(ro) and k1 < len(ao) and 0 <= ro[k0] <= ro[k1] <= f["rle"].shape[0]
                and 0 <= ao[k0] <= ao[k1] <= f["attr_ids"].shape[0]):
            raise CacheError(f"{raw['where']}: offsets out of range; the cache is corrupt, "
                             f"{_REBUILD}")
        raw["jpeg"] = f["jpeg"][j0:j1]
        raw["classes"], raw["boxes"] = f["classes"][k0:k1], f["boxes"][k0:k1]
        raw["attr_known"] = f["attr_known"][k0:k1]
        raw["rle_offsets"] = ro[k0:k1 + 1] - ro[k0]
        raw["attr_offsets"] = ao[k0:k1 + 1] - ao[k0]
        raw["rle"] = f["rle"][ro[k0]:ro[k1]].tobytes() if k1 > k0 else b""
        raw["attr_ids"] = (f["attr_ids"][ao[k0]:ao[k1]] if k1 > k0 else np.zeros(0, np.int32))
        return raw

    @staticmethod
    def _problems(raw: Dict[str, Any]) -> List[str]:
        """What is wrong with a record read by ``_read``: checksum, class ids, attribute ids."""
        problems = []
        crc = _record_crc(raw["image_id"], raw["file_name"], raw["orig_hw"], raw["cache_hw"],
                          raw["scale"], raw["has_annotations"], raw["jpeg"], raw["classes"],
                          raw["boxes"], np.diff(raw["rle_offsets"]), raw["rle"],
                          np.diff(raw["attr_offsets"]), raw["attr_ids"], raw["attr_known"])
        if crc != raw["crc32"]:
            problems.append(f"checksum mismatch (stored crc32 {raw['crc32']:08x}, data "
                            f"{crc:08x}): the stored bytes were altered")
        ao = raw["attr_offsets"]
        for j, c in enumerate(raw["classes"]):
            bad = _id_problem(int(c), [int(a) for a in raw["attr_ids"][ao[j]:ao[j + 1]]])
            if bad is not None:
                problems.append(f"instance {j}: {bad[1]}")
        return problems

    def _record(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        """Decode a record read by ``_read`` into the mapper's dict."""
        image = cv2.imdecode(raw["jpeg"], cv2.IMREAD_COLOR)
        ch, cw = (int(v) for v in raw["cache_hw"])
        if image is None or image.shape[:2] != (ch, cw):
            raise CacheError(f"{raw['where']}: stored JPEG does not decode to {cw}x{ch}")
        h, w = (int(v) for v in raw["orig_hw"])
        rec: Dict[str, Any] = dict(file_name=raw["file_name"], image_id=raw["image_id"], height=h,
                                   width=w, scale=raw["scale"],
                                   image=np.ascontiguousarray(image[..., ::-1]))
        if raw["has_annotations"]:
            ro, ao = raw["rle_offsets"], raw["attr_offsets"]
            rle, attrs, known = raw["rle"], raw["attr_ids"], raw["attr_known"]
            rec["annotations"] = [
                dict(segmentation={"size": [ch, cw], "counts": rle[ro[j]:ro[j + 1]]},
                     category_id=int(c), bbox_xyxy=raw["boxes"][j].tolist(),
                     attribute_ids=attrs[ao[j]:ao[j + 1]].tolist(),
                     attribute_ids_known=bool(known[j]), iscrowd=0)
                for j, c in enumerate(raw["classes"])]
        return rec

    def __getitem__(self, i: int) -> Dict[str, Any]:
        raw = self._read(i)
        problems = self._problems(raw)
        if problems:
            raise CacheError(f"{raw['where']}: " + "; ".join(problems)
                             + f". The cache is corrupt: {_REBUILD} (or skip bad records with "
                             "DATASETS.SKIP_INVALID)")
        return self._record(raw)


def verify_cache(path: str) -> List[str]:
    """Re-read every record: offsets/counts, CRC-32, class and attribute ids, JPEG decodes to its
    size, RLE sizes, box == mask box.

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
        per_image = ("file_names", "orig_hw", "cache_hw", "scales", "has_annotations", "crc32")
        if (int(f.attrs.get("num_images", -1)) != m or f["boxes"].shape[0] != k
                or f["attr_known"].shape[0] != k
                or any(f[name].shape[0] != m for name in per_image)):
            problems.append(f"{path}: counts disagree (num_images / per-image arrays / boxes and "
                            "attr_known vs classes)")
    if problems:
        return problems
    ds = CachedDataset(path)
    for i in range(len(ds)):
        try:
            raw = ds._read(i)
            problems.extend(f"{raw['where']}: {p}" for p in ds._problems(raw))
            rec = ds._record(raw)
        except Exception as e:  # report every bad record, not just the first
            problems.append(str(e) if isinstance(e, CacheError) else
                            f"{path}: record {i}: {type(e).__name__}: {e}")
            continue
        ch, cw = rec["image"].shape[:2]
        for j, ann in enumerate(rec.get("annotations", ())):
            where = f"{raw['where']} instance {j}"
            try:
                mask = mask_util.decode(ann["segmentation"])
            except Exception as e:
                problems.append(f"{where}: RLE does not decode ({e})")
                continue
            if mask.shape != (ch, cw):
                problems.append(f"{where}: mask {mask.shape} invalid (expected {(ch, cw)})")
            elif not np.array_equal(mask_to_box_xyxy(mask), np.float32(ann["bbox_xyxy"])):
                problems.append(f"{where}: stored box {ann['bbox_xyxy']} != mask box")
    return problems
