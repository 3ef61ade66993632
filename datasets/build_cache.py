#!/usr/bin/env python3
"""Convert a registered dataset into an HDF5 cache for one input size, or verify a cache.

    python datasets/build_cache.py --dataset fashion_synth_train --size 512 --output train512.h5
    python datasets/build_cache.py --output train512.h5 --verify        # check an existing file

Every record stores a CRC-32 of its payload; --verify recomputes them (any altered byte of a stored
JPEG, mask or annotation is reported with the record index and image id) and checks class and
attribute ids against the taxonomy. With --skip-invalid, bad images and bad annotations (in the
annotation file, or found while encoding) are skipped, each is named in the log, and one summary
of what was skipped ends the build.

Exit status: 0 = done / sound; 1 = the build failed on bad input or a dead worker, or --verify
found problems; 2 = the cache file cannot be used at all (missing, incomplete, old format).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import h5py

from effdetmask.data.build import get_detection_dataset_dicts
from effdetmask.data.builtin import register_all
from effdetmask.data.hdf5_cache import CacheError, build_cache, verify_cache
from effdetmask.data.validation import DatasetIssue, SkipReport, collect_skips

logger = logging.getLogger("build_cache")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", help="registered dataset name(s), comma separated")
    p.add_argument("--root", default="", help="dataset root (DATASETS.ROOT; default: "
                   "$EFFDETMASK_DATASETS, else ./datasets)")
    p.add_argument("--size", type=int, default=512, help="long side of cached images (INPUT.SIZE)")
    p.add_argument("--output", required=True, help="cache file to write (or to verify)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoder processes")
    p.add_argument("--verify", action="store_true", help="re-read and check every record")
    p.add_argument("--synth", type=int, nargs=3, metavar=("NUM_IMAGES", "IMAGE_SIZE", "SEED"),
                   help="parameters of the generated fashion_synth_* split to cache, as given to "
                        "datasets/generate_synth.py (DATASETS.SYNTH; default: the config's); each "
                        "parameter set has its own folder, none replaces another")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip and count bad images and annotations (each is named in the log)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.dataset:
        # The built-in loaders take skip_invalid when registered: register them for this run.
        synth = None
        if args.synth:
            synth = {split: tuple(args.synth) for split in ("train", "val")}
        register_all(args.root or None, skip_invalid=args.skip_invalid, synth=synth,
                     overwrite=True)
        report = SkipReport(args.dataset, max_logged=None)  # every skipped item is logged
        t0 = time.perf_counter()
        try:
            with collect_skips(report):  # loaders and encoder count into one report
                dicts = get_detection_dataset_dicts(args.dataset.split(","),
                                                    skip_invalid=args.skip_invalid)
                build_cache(dicts, args.output, args.size, dataset_name=args.dataset,
                            workers=args.workers, skip_invalid=args.skip_invalid)
        except (DatasetIssue, CacheError) as e:
            logger.error("build failed: %s", e)
            if report.total:
                report.log_summary(logger)
            return 1
        dt = time.perf_counter() - t0
        report.log_summary(logger)
        with h5py.File(args.output, "r") as f:
            n = int(f.attrs["num_images"])
        logger.info("wrote %s: %d images, %.1f KB/image, %.1f images/s", args.output, n,
                    os.path.getsize(args.output) / max(n, 1) / 1024, len(dicts) / dt)
    elif not args.verify:
        p.error("give --dataset to build, or --verify to check an existing --output")
    if args.verify:
        try:
            problems = verify_cache(args.output)
        except CacheError as e:
            logger.error("%s", e)
            return 2
        for msg in problems[:50]:
            logger.error("%s", msg)
        if problems:
            logger.error("verify: %d problem(s) in %s", len(problems), args.output)
            return 1
        logger.info("verify: %s is sound", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
