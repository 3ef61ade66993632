#!/usr/bin/env python3
"""Write a Kaggle iMaterialist (Fashion) 2020 ``submission.csv`` from a results JSON.

    python tools/kaggle_submission.py --results output/inference/<ds>/coco_instances_results.json \\
        --images info_test2020.json --output submission.csv [--score-threshold 0.3] \\
        [--no-empty-rows]

``--results``: COCO/Fashionpedia results (``image_id``, ``category_id``, ``score``, RLE
``segmentation``, optional ``attribute_ids``). ``--images``: a COCO/Fashionpedia GT or image-info
JSON giving ``file_name``, ``height``, ``width`` of every test image (and the results' label ids).
Masks are made non-overlapping (the higher score keeps a pixel); an image without detections gets
the placeholder row ``1 1`` / class 23 unless ``--no-empty-rows``. Format details:
``effdetmask.data.kaggle_submission``.
"""

import argparse
import logging

from effdetmask.data.kaggle_submission import write_kaggle_submission


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--results", required=True, help="results JSON (list of detections)")
    parser.add_argument("--images", required=True, help="GT or image-info JSON of the test images")
    parser.add_argument("--output", default="submission.csv", help="CSV to write")
    parser.add_argument("--score-threshold", type=float, default=0.0,
                        help="leave out detections scoring below this")
    parser.add_argument("--no-empty-rows", action="store_true",
                        help="no placeholder row for images without detections")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    stats = write_kaggle_submission(args.results, args.images, args.output,
                                    score_threshold=args.score_threshold,
                                    empty_image_row=not args.no_empty_rows)
    print(f"wrote {args.output}: {stats.rows} rows for {stats.images} images "
          f"({stats.placeholder_rows} placeholder rows; left out: {stats.below_threshold} below "
          f"the score threshold, {stats.emptied_by_overlap} covered by higher scores, "
          f"{stats.unknown_category} of unknown categories)")


if __name__ == "__main__":
    main()
