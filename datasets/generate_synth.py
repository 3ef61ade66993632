#!/usr/bin/env python3
"""Generate the synthetic Fashionpedia-format dataset (the project's embedded default data).

    python datasets/generate_synth.py --root datasets --split train --num-images 200 --size 384
"""

from __future__ import annotations

import argparse
import logging
import sys

from effdetmask.data.synthetic import ensure_fashion_synth

logger = logging.getLogger("generate_synth")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default="datasets", help="datasets root (writes ROOT/fashion_synth/)")
    p.add_argument("--split", action="append", help="split(s) to generate (default train and val)")
    p.add_argument("--num-images", type=int, default=200, help="images per split")
    p.add_argument("--size", type=int, default=384, help="long side of the generated images")
    p.add_argument("--seed", type=int, default=0, help="generator seed (splits differ by design)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for split in args.split or ["train", "val"]:
        path = ensure_fashion_synth(args.root, split, args.num_images, args.size, args.seed)
        logger.info("%s ready: %s", split, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
