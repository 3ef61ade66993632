"""Command-line flags and run-directory setup shared by train_net.py and the tools."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch

from ..config import CfgNode, setup_cfg

__all__ = [
    "default_argument_parser",
    "LaunchSpec",
    "default_setup",
    "environment_summary",
    "check_device",
]

logger = logging.getLogger("effdetmask")


class _FlagsAmongOptsParser(argparse.ArgumentParser):
    """An ArgumentParser whose trailing ``KEY VALUE`` pairs (``opts``) may have flags among them.

    ``argparse.REMAINDER`` takes everything after the first config key, so ``OUTPUT_DIR out
    --resume`` would make ``--resume`` a config key. Here the pairs are walked in order: a token
    in key position that is one of this parser's flags is parsed as that flag (with its value,
    if it takes one); a flag where a key's value belongs is an error naming the key.
    """

    def _flag_action(self, token: str) -> Optional[argparse.Action]:
        if not token.startswith("--"):
            return None
        return self._option_string_actions.get(token.split("=", 1)[0])

    def _split_opts(self, opts: Sequence[str]) -> Tuple[List[str], List[str]]:
        flags: List[str] = []
        pairs: List[str] = []
        i = 0
        while i < len(opts):
            token = opts[i]
            if token.startswith("--"):
                action = self._flag_action(token)
                if action is None:
                    self.error(f"unrecognized argument {token} among the KEY VALUE config "
                               "overrides")
                takes_value = action.nargs != 0 and "=" not in token
                if takes_value and (i + 1 >= len(opts) or self._flag_action(opts[i + 1])):
                    self.error(f"argument {token}: expected one argument")
                flags += opts[i:i + 1 + int(takes_value)]
                i += 1 + int(takes_value)
                continue
            if i + 1 < len(opts) and self._flag_action(opts[i + 1]) is not None:
                self.error(f"config key {token} has no value: the flag {opts[i + 1]} follows it "
                           "(give KEY VALUE pairs)")
            pairs += opts[i:i + 2]
            i += 2
        return flags, pairs

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        opts = list(getattr(namespace, "opts", None) or [])
        if any(t.startswith("--") for t in opts):
            flags, pairs = self._split_opts(opts)
            namespace, more = super().parse_known_args(flags, namespace)
            namespace.opts = pairs
            extras += more
        return namespace, extras


def default_argument_parser(description: str = "EffDetMask training and evaluation"):
    """detectron2's flags: a handful of options, every config key as trailing ``KEY VALUE``.

    Flags may also come after (or between) the ``KEY VALUE`` pairs."""
    parser = _FlagsAmongOptsParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n"
        "  python train_net.py --config-file configs/effdet_d0.yaml\n"
        "  python train_net.py --config-file configs/effdet_d1.yaml --num-gpus 4 "
        "SOLVER.BASE_LR 0.005\n"
        "  python train_net.py --config-file configs/effdet_d0.yaml --eval-only "
        "MODEL.WEIGHTS output/effdet_d0/model_final.safetensors\n",
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a yaml config")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/checkpoints/last.ckpt (step, optimiser, "
        "scheduler, sampler position and RNG)",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate MODEL.WEIGHTS on DATASETS.TEST and print the benchmark table",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1 if torch.cuda.is_available() else 0,
        help="GPUs per machine (0 = CPU)",
    )
    parser.add_argument(
        "--num-cpu-processes",
        type=int,
        default=1,
        help="with --num-gpus 0: CPU processes for DDP over gloo (tests, debugging)",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine")
    parser.add_argument(
        "--dist-url",
        default="tcp://127.0.0.1:29500",
        help="tcp://HOST:PORT of the machine of rank 0",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides as KEY VALUE pairs"
    )
    return parser


@dataclass(frozen=True)
class LaunchSpec:
    """Where the run executes: accelerator, processes per machine and machines."""

    accelerator: str
    devices: int
    num_nodes: int
    node_rank: int
    master_addr: str
    master_port: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LaunchSpec":
        if args.num_gpus > 0 and not torch.cuda.is_available():
            raise SystemExit(
                f"--num-gpus {args.num_gpus} but no CUDA device is available; "
                "use --num-gpus 0 for CPU"
            )
        if args.num_gpus > torch.cuda.device_count():
            raise SystemExit(
                f"--num-gpus {args.num_gpus} but only {torch.cuda.device_count()} "
                "CUDA devices are visible"
            )
        url = urlparse(args.dist_url)
        if url.scheme != "tcp" or not url.hostname or not url.port:
            raise SystemExit(f"--dist-url must look like tcp://HOST:PORT, got {args.dist_url!r}")
        gpu = args.num_gpus > 0
        return cls(
            accelerator="gpu" if gpu else "cpu",
            devices=args.num_gpus if gpu else max(1, args.num_cpu_processes),
            num_nodes=args.num_machines,
            node_rank=args.machine_rank,
            master_addr=url.hostname,
            master_port=url.port,
        )

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def export_environment(self) -> None:
        """Lightning's DDP launcher reads the rendezvous from these variables."""
        if self.world_size > 1:
            os.environ.setdefault("MASTER_ADDR", self.master_addr)
            os.environ.setdefault("MASTER_PORT", str(self.master_port))
            os.environ.setdefault("NODE_RANK", str(self.node_rank))


def check_device(device: str, key: str = "MODEL.DEVICE") -> torch.device:
    """``torch.device(device)``, or a ``ValueError`` naming ``key`` when it is not a device name or
    names a CUDA device this machine does not have (instead of torch's error later, or of the
    setting being ignored)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"{key} {device!r} is not a torch device such as 'cpu', 'cuda' or "
                         f"'cuda:1' ({e})") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key} {device!r} but no CUDA device is available "
                             f"(torch.cuda.is_available() is False); set {key} cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{key} {device!r} but only {count} CUDA device(s) are visible")
    return parsed


def environment_summary() -> str:
    """Versions and devices, written into every run directory."""
    import effdet
    import lightning
    import timm
    import torchvision

    lines = [
        f"python: {sys.version.split()[0]} ({platform.platform()})",
        f"torch: {torch.__version__} (cuda build {torch.version.cuda}, "
        f"cuda available {torch.cuda.is_available()})",
        f"torchvision: {torchvision.__version__}",
        f"timm: {timm.__version__}",
        f"effdet: {getattr(effdet, '__version__', '0.4.1')}",
        f"lightning: {lightning.__version__}",
        f"cpu threads: {torch.get_num_threads()}",
    ]
    for i in range(torch.cuda.device_count()):
        lines.append(f"gpu {i}: {torch.cuda.get_device_name(i)}")
    return "\n".join(lines) + "\n"


def default_setup(args: argparse.Namespace, is_global_zero: Optional[bool] = None) -> CfgNode:
    """Config from args; logging; the run directory with config.yaml and env.txt."""
    cfg = setup_cfg(args.config_file, args.opts)
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
        datefmt="%H:%M:%S",
    )
    if is_global_zero is None:
        is_global_zero = int(os.environ.get("LOCAL_RANK", 0)) == 0 and args.machine_rank == 0
    if is_global_zero:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
        with open(os.path.join(cfg.OUTPUT_DIR, "env.txt"), "w") as f:
            f.write(environment_summary())
        logger.info("run directory %s; full config in config.yaml", cfg.OUTPUT_DIR)
    return cfg
