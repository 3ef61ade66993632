#!/usr/bin/env python3
"""Parameters per part, FLOPs and checkpoint size of a configured model.

    python tools/model_summary.py --config-file configs/effdet_d0.yaml [--no-flops] [KEY VALUE ...]
"""

import argparse
import logging

from effdetmask.config import RANDOM_INIT_OPTS, setup_cfg
from effdetmask.modeling import build_model
from effdetmask.utils.model_summary import format_summary, summarize_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # sizes and FLOPs do not depend on the weights: build untrained, offline
    cfg = setup_cfg(args.config_file, [*RANDOM_INIT_OPTS, *args.opts])
    model = build_model(cfg, device="cpu")
    summary = summarize_model(model, cfg.INPUT.SIZE, flops=not args.no_flops)
    print(format_summary(args.config_file, summary))


if __name__ == "__main__":
    main()
