"""HDF5 cache of a dataset at one input size: JPEG bytes + COCO RLE masks in flat arrays.

Layout (``M`` images, ``K`` instances; ``*_offsets`` have ``M + 1`` / ``K + 1`` entries,
record ``i`` is ``data[offsets[i]:offsets[i + 1]]``):

* per image: ``image_ids`` int64 [M], ``file_names`` str [M], ``orig_hw`` int32 [M, 2] (original
  size), ``cache_hw`` int32 [M, 2] (stored size, long side = ``attrs["size"]``), ``scales`` float64
  [M] (cache pixels per original pixel), ``has_annotations`` bool [M], ``crc32`` uint32 [M] (see
  below), ``jpeg`` uint8 flat + ``jpeg_offsets``, ``inst_offsets`` int64 [M + 1] into the
  per-instance arrays;
* per instance: ``classes`` int64 [K], ``boxes`` float32 [K, 4] (xyxy cache pixels, from the mask),
  ``rle`` uint8 flat (compressed COCO counts) + ``rle_offsets``, ``attr_ids`` int32 flat (raw sparse
  attribute ids) + ``attr_offsets``, ``attr_known`` bool [K] (the annotation's
  ``attribute_ids_known``: False = its attributes are unknown, not "none").

Images are resized once (aspect kept, area interpolation when shrinking, no padding). The file is
written as ``PATH.tmp`` and renamed on success; ``attrs["complete"] = True`` is written last, and
readers refuse a file without it. A ``PATH.tmp`` that a killed build left behind is removed (and
logged) by the next build.

Integrity (format version 3; reading is :mod:`effdetmask.data.hdf5_reader`): ``crc32`` holds,
per image, the CRC-32 of the record's whole payload (image id, file name, sizes, scale, JPEG
bytes, and every instance's class, box, RLE bytes, attribute ids and known flag, with the
per-instance lengths). Reading a record recomputes it and checks class ids (0..NUM_CLASSES-1) and
attribute ids against the taxonomy; a mismatch is a :class:`CacheError` that names the file, the
record index, the image id and the problem (``MapDataset`` with ``skip_invalid`` skips and counts
it). Files of an older format are refused with a request to
rebuild (version 2 lacks ``attr_known``, version 1 the checksums).

With ``workers > 0`` the records are encoded in a :class:`~concurrent.futures.ProcessPoolExecutor`:
an error raised in a worker arrives intact (every project exception pickles), and a worker that dies
(out-of-memory killer, ``kill -9``) ends the build with a :class:`CacheError` naming the images that
were being encoded, instead of waiting forever.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import h5py
import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

# the reader's names are re-exported: this module is the cache's public entry point
from effdetmask.data.hdf5_reader import (  # noqa: F401
    CACHE_VERSION,
    CachedDataset,
    CacheError,
    _id_problem,
    _record_crc,
    open_cache,
    verify_cache,
)
from effdetmask.data.image_io import read_image_rgb
from effdetmask.data.mapper import attribute_ids_known, letterbox_size, resize_image
from effdetmask.data.validation import DatasetIssue, Reason, SkipReport
from effdetmask.structures.masks import masks_to_boxes_xyxy, rasterize_segmentation

logger = logging.getLogger(__name__)

__all__ = ["build_cache", "verify_cache", "CachedDataset", "CacheError", "encode_record",
           "open_cache", "CACHE_VERSION"]

JPEG_QUALITY = 95
_FLUSH_EVERY = 64  # records buffered by the writer between HDF5 appends
# Errors of one annotation that make it unusable (bad segmentation, ids, types).
_ANNOTATION_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError)


def _segmentation_reason(segmentation: Any) -> str:
    if isinstance(segmentation, dict):
        return Reason.INVALID_RLE
    return Reason.INVALID_POLYGON if isinstance(segmentation, list) else Reason.BAD_RECORD


def encode_record(item: Dict[str, Any], size: int,
                  skipped: Optional[List[DatasetIssue]] = None) -> Dict[str, Any]:
    """Dataset dict -> cache record in compact form (JPEG bytes, RLE count strings).

    Args:
        skipped: when given, a bad annotation is left out of the record and its issue appended
            here (the image is kept); otherwise it raises.
    Raises:
        DatasetIssue: unreadable image, malformed record, or (without ``skipped``) an unusable
            annotation: bad segmentation, class id outside 0..NUM_CLASSES-1, attribute id not in
            the taxonomy. The message names the file, the image id and the annotation.
    """
    source = str(item.get("file_name", "?")) if isinstance(item, dict) else "?"
    try:
        h, w = int(item["height"]), int(item["width"])
        image_id, file_name = int(item["image_id"]), str(item["file_name"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetIssue(source, f"malformed dataset dict ({type(e).__name__}: {e})",
                           reason=Reason.BAD_RECORD) from None
    image = read_image_rgb(file_name, expected_hw=(h, w))
    ch, cw, scale = letterbox_size(h, w, size)
    small = resize_image(image, ch, cw)
    ok, jpeg = cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DatasetIssue(file_name, "JPEG encoding failed", reason=Reason.CORRUPT_IMAGE)
    anns: List[Tuple[int, List[int], bool]] = []
    masks: List[np.ndarray] = []
    for i, a in enumerate(item.get("annotations", ()) or ()):
        ann_id = a.get("id") if isinstance(a, dict) else None
        record = f"image id {image_id}, annotation {i}" + (
            f" (id {ann_id})" if ann_id is not None else "")
        reason = Reason.BAD_RECORD
        try:
            if a.get("iscrowd", 0):
                continue
            attr_ids = list(a.get("attribute_ids", ()) or ())
            bad_id = _id_problem(a["category_id"], attr_ids)
            if bad_id is not None:
                reason, problem = bad_id
                raise ValueError(problem)
            reason = _segmentation_reason(a["segmentation"])
            mask = rasterize_segmentation(a["segmentation"], h, w, ch, cw)
        except _ANNOTATION_ERRORS as e:
            problem = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            issue = DatasetIssue(file_name, problem, record, reason)
            if skipped is None:
                raise issue from e
            skipped.append(issue)
            continue
        anns.append((int(a["category_id"]), [int(x) for x in attr_ids], attribute_ids_known(a)))
        masks.append(mask)
    stacked = np.stack(masks) if masks else np.zeros((0, ch, cw), np.uint8)
    boxes = masks_to_boxes_xyxy(stacked)
    keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    rles = [mask_util.encode(np.asfortranarray(stacked[k]))["counts"] for k in keep]
    return dict(image_id=image_id, file_name=file_name, orig_hw=(h, w),
                cache_hw=(ch, cw), scale=scale, has_annotations="annotations" in item,
                jpeg=jpeg.tobytes(), rles=rles, boxes=boxes[keep],
                classes=[anns[k][0] for k in keep], attr_ids=[anns[k][1] for k in keep],
                attr_known=[anns[k][2] for k in keep])


def _describe(item: Any) -> str:
    if not isinstance(item, dict):
        return repr(item)[:80]
    return f"{item.get('file_name', '?')} (image id {item.get('image_id', '?')})"


Issues = List[Tuple[str, str]]


class _Encoder:
    """Picklable worker function: ``(record, issues)``; ``record`` is None for a skipped image.

    ``issues`` are ``(reason, message)`` of what was skipped (the image, or bad annotations of a
    kept image). Without ``skip_invalid`` the first :class:`DatasetIssue` is raised; an unexpected
    error becomes a :class:`CacheError` naming the image (and is never skipped).
    """

    def __init__(self, size: int, skip_invalid: bool) -> None:
        self.size, self.skip_invalid = size, skip_invalid

    def __call__(self, item: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]], Issues]:
        skipped: Optional[List[DatasetIssue]] = [] if self.skip_invalid else None
        try:
            record = encode_record(item, self.size, skipped=skipped)
        except DatasetIssue as e:
            if not self.skip_invalid:
                raise
            return None, [(e.reason, str(e))]
        except (MemoryError, CacheError):
            raise
        except Exception as e:
            raise CacheError(f"{_describe(item)}: encoding failed: {type(e).__name__}: {e}") from e
        return record, [(e.reason, str(e)) for e in skipped or ()]


class _InOrder:
    """Encoder results in input order, computed here (``workers == 0``) or in worker processes.

    At most ``2 * workers`` images are in flight. The workers start in the constructor, before the
    caller opens the output file or starts threads. A worker that dies ends the iteration with a
    :class:`CacheError` naming the images that were in flight (one of them killed it).
    """

    def __init__(self, items: Sequence[Dict[str, Any]], encoder: _Encoder, workers: int,
                 output: str) -> None:
        self.items, self.encoder, self.output = items, encoder, output
        self.executor = ProcessPoolExecutor(max_workers=workers) if workers > 0 else None
        self.window = 2 * max(workers, 1)
        self.pending: Deque[Tuple[int, Future]] = deque()
        self.submitted = 0
        if self.executor is not None:
            try:
                self._fill()
            except BrokenProcessPool as e:
                self.close()
                raise CacheError(self._lost_message()) from e

    def _fill(self) -> None:
        assert self.executor is not None
        while len(self.pending) < self.window and self.submitted < len(self.items):
            i = self.submitted
            self.pending.append((i, self.executor.submit(self.encoder, self.items[i])))
            self.submitted += 1

    def __iter__(self) -> Iterator[Tuple[Optional[Dict[str, Any]], Issues]]:
        if self.executor is None:
            yield from map(self.encoder, self.items)
            return
        while self.pending:
            try:
                result = self.pending[0][1].result()
                self.pending.popleft()
                self._fill()  # submit() raises too once the pool is broken
            except BrokenProcessPool as e:
                raise CacheError(self._lost_message()) from e
            except (DatasetIssue, CacheError):
                raise  # already names the image
            except Exception as e:  # e.g. the dict or the record could not cross the boundary
                item = _describe(self.items[self.pending[0][0]])
                raise CacheError(f"{self.output}: {item}: {type(e).__name__}: {e}") from e
            yield result

    def _lost_message(self) -> str:
        lost = [self.items[i] for i, f in self.pending
                if not (f.done() and not f.cancelled() and f.exception() is None)]
        names = "; ".join(_describe(item) for item in lost[:20])
        more = f"; and {len(lost) - 20} more" if len(lost) > 20 else ""
        first = self.pending[0][0] if self.pending else self.submitted
        return (f"{self.output}: an encoder worker process died (killed, e.g. by the "
                f"out-of-memory killer or kill -9) while encoding one of these {len(lost)} "
                f"image(s): {names}{more}. The build stopped at image {first} of "
                f"{len(self.items)}; nothing was written. Rerun with fewer --workers if memory "
                f"ran out.")

    def close(self) -> None:
        if self.executor is not None:
            # After an error: drop the queued images and wait only for those being encoded.
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


class _Writer:
    """Appends records to resizable flat datasets; the only process that touches the file."""

    _SPECS = dict(image_ids=("i8", ()), orig_hw=("i4", (2,)), cache_hw=("i4", (2,)),
                  scales=("f8", ()), has_annotations=("?", ()), crc32=("u4", ()), jpeg=("u1", ()),
                  classes=("i8", ()), boxes=("f4", (4,)), rle=("u1", ()), attr_ids=("i4", ()),
                  attr_known=("?", ()),
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
        self._append("crc32", np.array([_writer_crc(r) for r in b], np.uint32))
        self._append("jpeg", np.frombuffer(b"".join(r["jpeg"] for r in b), np.uint8))
        self._append("jpeg_offsets", cum([r["jpeg"] for r in b], last["jpeg_offsets"]))
        self._append("inst_offsets", cum([r["rles"] for r in b], last["inst_offsets"]))
        self._append("classes", np.array([c for r in b for c in r["classes"]], np.int64))
        self._append("boxes", np.concatenate([r["boxes"] for r in b]).reshape(-1, 4))
        self._append("rle", np.frombuffer(b"".join(rles), np.uint8))
        self._append("rle_offsets", cum(rles, last["rle_offsets"]))
        self._append("attr_ids", np.array([x for a in attrs for x in a], np.int32))
        self._append("attr_offsets", cum(attrs, last["attr_offsets"]))
        self._append("attr_known", np.array([k for r in b for k in r["attr_known"]], bool))


def _writer_crc(r: Dict[str, Any]) -> int:
    return _record_crc(
        r["image_id"], r["file_name"], r["orig_hw"], r["cache_hw"], r["scale"],
        r["has_annotations"], r["jpeg"], r["classes"], r["boxes"], [len(x) for x in r["rles"]],
        b"".join(r["rles"]), [len(a) for a in r["attr_ids"]],
        [x for a in r["attr_ids"] for x in a], r["attr_known"])


def build_cache(dataset_dicts: Sequence[Dict[str, Any]], output: str, size: int, *,
                dataset_name: str = "", workers: int = 0, skip_invalid: bool = False,
                progress: bool = True) -> SkipReport:
    """Encode every dataset dict at ``size`` into the HDF5 file ``output`` (atomically).

    Args:
        dataset_dicts: detectron2-style dicts (``docs/interfaces.md``).
        output: final path; the build writes ``output + ".tmp"`` and renames it on success. A
            ``.tmp`` left by a killed build is removed first (logged).
        size: long side of the cached images (the model's ``INPUT.SIZE``).
        workers: encoder processes (0 = in this process); records keep the input order.
        skip_invalid: skip and count bad images, and bad annotations (the image is kept without
            them), instead of failing on the first.
    Returns:
        the report of skipped images and annotations.
    Raises:
        DatasetIssue: the first bad image/annotation (without ``skip_invalid``), naming it.
        CacheError: an encoder process died (naming the images it may have been encoding), an
            unexpected encoding error (naming the image), or nothing could be cached.
    """
    report = SkipReport(dataset_name or output)
    tmp = output + ".tmp"
    if os.path.exists(tmp):
        logger.warning("removing %s: a stale temporary file left by an interrupted build", tmp)
        os.remove(tmp)
    results = _InOrder(dataset_dicts, _Encoder(size, skip_invalid), workers, output)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(version=CACHE_VERSION, size=size, dataset=dataset_name, complete=False,
                           checksum="crc32 per record")
            writer = _Writer(f)
            for rec, issues in tqdm(results, total=len(dataset_dicts), disable=not progress,
                                    desc=f"cache {dataset_name or output}", unit="img"):
                for reason, message in issues:
                    report.add(reason, message)
                if rec is not None:
                    writer.add(rec)
            writer.flush()
            num_images = f["image_ids"].shape[0]
            if num_images == 0 and len(dataset_dicts) > 0:
                raise CacheError(f"{output}: no image could be cached: all {len(dataset_dicts)} "
                                 f"were skipped\n{report.summary()}")
            f.attrs["num_images"] = num_images
            f.flush()
            f.attrs["complete"] = True  # last: a crash before this leaves an incomplete file
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        results.close()
    return report
