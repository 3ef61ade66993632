#!/usr/bin/env python3
"""Train or evaluate an EffDetMask (or the Mask R-CNN baseline) model.

python train_net.py --config-file configs/effdet_d1.yaml [--resume] [--num-gpus N] [KEY VALUE ...]
python train_net.py --config-file configs/effdet_d1.yaml --eval-only MODEL.WEIGHTS model.safetensors
"""

import logging

from effdetmask.engine.benchmark import print_benchmark_table
from effdetmask.engine.defaults import (
    LaunchSpec,
    check_device,
    default_argument_parser,
    default_setup,
)
from effdetmask.engine.trainer import evaluate, train

logger = logging.getLogger("effdetmask.train_net")


def main(args) -> dict:
    cfg = default_setup(args)
    check_device(cfg.MODEL.DEVICE)  # a CUDA device this machine lacks is an error, not ignored
    launch = LaunchSpec.from_args(args)
    if args.eval_only:
        results = evaluate(cfg, launch)
        print_benchmark_table(cfg, results)
        return results
    return train(cfg, launch, resume=args.resume)


if __name__ == "__main__":
    main(default_argument_parser().parse_args())
