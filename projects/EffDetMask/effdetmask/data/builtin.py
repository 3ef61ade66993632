"""Built-in datasets, registered lazily (a function per name; no file is touched at registration).

Layout under the dataset root (``DATASETS.ROOT``, else ``$EFFDETMASK_DATASETS``, else
``./datasets``):

* ``fashionpedia/{train,test}/`` images + ``fashionpedia/annotations/instances_attributes_
  {train,val}2020.json`` -> ``fashionpedia_train`` / ``fashionpedia_val`` (the official val images
  live in the ``test`` folder).
* ``imaterialist2020/train.csv`` + ``train/`` + ``label_descriptions.json`` -> ``imat2020_train``.
* ``fashion_synth/{train,val}_n<images>_s<size>_seed<seed>/`` -> ``fashion_synth_train`` /
  ``fashion_synth_val`` (the folder of DATASETS.SYNTH's parameters), generated on
  first use by ``effdetmask.data.synthetic.ensure_fashion_synth`` (the embedded default data).
* the layout of the small real sample shipped beside this project (``../shared/data``; set
  ``DATASETS.ROOT`` to it): ``fashionpedia_api_sample/{sample.json,images/}`` ->
  ``fashionpedia_api_sample`` (2 images, pre-release taxonomy remapped by name) and
  ``imat2020_train_rle/{train_rows_*.csv,images/}`` + ``label_descriptions/
  imat2020_fgvc7_label_descriptions.json`` -> ``imat2020_sample`` (1 image).

``effdetmask.data`` registers all of them with the default root and options on import;
:func:`register_all_from_cfg` re-registers them for a config's root, synth parameters and
``DATASETS.SKIP_INVALID``.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Callable, Dict, List, Optional

from .catalog import DatasetCatalog, MetadataCatalog
from .fashionpedia import load_fashionpedia_json
from .kaggle import load_imaterialist_csv
from .taxonomy import fashionpedia_metadata

__all__ = ["ENV_VAR", "dataset_root", "register_all", "register_all_from_cfg", "BUILTIN_NAMES"]

logger = logging.getLogger(__name__)

ENV_VAR = "EFFDETMASK_DATASETS"
BUILTIN_NAMES = (
    "fashionpedia_train",
    "fashionpedia_val",
    "imat2020_train",
    "fashion_synth_train",
    "fashion_synth_val",
    "fashionpedia_api_sample",
    "imat2020_sample",
)
# Default generator parameters; the same values as DATASETS.SYNTH in config.py, which is where a
# run changes them (register_all_from_cfg).
_DEFAULT_SYNTH = {"train": (200, 384, 0), "val": (40, 384, 0)}


def dataset_root(cfg_root: str = "") -> str:
    """Absolute dataset root: ``cfg_root``, else ``$EFFDETMASK_DATASETS``, else ./datasets."""
    root = cfg_root or os.environ.get(ENV_VAR, "") or "datasets"
    return os.path.abspath(os.path.expanduser(root))


_HOW_TO_PREPARE = "see datasets/README.md for where to get it and how to lay it out"


def _require(path: str, dataset: str) -> None:
    """A built-in dataset that is not on disk: say where it was looked for and how to get it."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"dataset {dataset!r}: {path} does not exist; {_HOW_TO_PREPARE} (dataset root: "
            f"DATASETS.ROOT, else ${ENV_VAR}, else ./datasets)"
        )


def _fashionpedia_loader(name: str, json_file: str, image_root: str,
                         skip_invalid: bool) -> Callable:
    def load() -> List[Dict[str, Any]]:
        _require(json_file, name)
        _require(image_root, name)
        return load_fashionpedia_json(json_file, image_root, skip_invalid=skip_invalid)

    return load


def _imat_loader(root: str, skip_invalid: bool) -> Callable:
    base = os.path.join(root, "imaterialist2020")

    def load() -> List[Dict[str, Any]]:
        for path in ("train.csv", "train", "label_descriptions.json"):
            _require(os.path.join(base, path), "imaterialist2020")
        return load_imaterialist_csv(
            os.path.join(base, "train.csv"), os.path.join(base, "train"),
            label_json=os.path.join(base, "label_descriptions.json"), skip_invalid=skip_invalid,
        )

    return load


def _imat_sample_loader(root: str, skip_invalid: bool) -> Callable:
    base = os.path.join(root, "imat2020_train_rle")
    labels = os.path.join(root, "label_descriptions", "imat2020_fgvc7_label_descriptions.json")

    def load() -> List[Dict[str, Any]]:
        for path in (base, os.path.join(base, "images"), labels):
            _require(path, "imat2020_sample")
        rows = sorted(glob.glob(os.path.join(base, "train_rows_*.csv")))
        if len(rows) != 1:
            raise FileNotFoundError(
                f"dataset 'imat2020_sample': expected one train_rows_*.csv in {base}, "
                f"found {len(rows)}"
            )
        return load_imaterialist_csv(rows[0], os.path.join(base, "images"), label_json=labels,
                                     skip_invalid=skip_invalid)

    return load


def _synth_loader(name: str, root: str, split: str, num_images: int, image_size: int, seed: int,
                  skip_invalid: bool) -> Callable:
    def load() -> List[Dict[str, Any]]:
        # Imported here: generation code is only needed when the dataset is actually read.
        from .synthetic import ensure_fashion_synth

        json_file = ensure_fashion_synth(root, split, num_images, image_size, seed)
        # Plain assignment, not Metadata.set: the generator owns the path, and re-registration
        # with other parameters legitimately points the same name at a new file.
        MetadataCatalog.get(name).json_file = json_file
        return load_fashionpedia_json(json_file, os.path.dirname(json_file),
                                      skip_invalid=skip_invalid)

    return load


def _register(name: str, loader: Callable, overwrite: bool, **meta: Any) -> None:
    if name in DatasetCatalog:
        if not overwrite:
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**fashionpedia_metadata(), **meta)


def register_all(
    root: Optional[str] = None,
    skip_invalid: bool = False,
    synth: Optional[Dict[str, tuple]] = None,
    overwrite: bool = False,
) -> None:
    """Register every built-in dataset under ``root`` (idempotent; no I/O).

    Args:
        root: dataset root; ``None`` = :func:`dataset_root` default.
        skip_invalid: the loaders skip and count bad records instead of raising.
        synth: ``{"train": (num_images, image_size, seed), "val": (...)}`` for the generated data.
        overwrite: replace names registered earlier (e.g. at import with the default root);
            without it, already registered names are left as they are.
    """
    root = dataset_root(root or "")
    fp = os.path.join(root, "fashionpedia")
    for split, images, ann in (("train", "train", "train2020"), ("val", "test", "val2020")):
        json_file = os.path.join(fp, "annotations", f"instances_attributes_{ann}.json")
        _register(f"fashionpedia_{split}",
                  _fashionpedia_loader(f"fashionpedia_{split}", json_file,
                                       os.path.join(fp, images), skip_invalid),
                  overwrite, json_file=json_file, image_root=os.path.join(fp, images))
    _register("imat2020_train", _imat_loader(root, skip_invalid), overwrite,
              image_root=os.path.join(root, "imaterialist2020", "train"))
    sample = os.path.join(root, "fashionpedia_api_sample")
    _register("fashionpedia_api_sample",
              _fashionpedia_loader("fashionpedia_api_sample", os.path.join(sample, "sample.json"),
                                   os.path.join(sample, "images"), skip_invalid),
              overwrite, json_file=os.path.join(sample, "sample.json"),
              image_root=os.path.join(sample, "images"))
    _register("imat2020_sample", _imat_sample_loader(root, skip_invalid), overwrite,
              image_root=os.path.join(root, "imat2020_train_rle", "images"))
    params = dict(_DEFAULT_SYNTH, **(synth or {}))
    for split in ("train", "val"):
        num_images, image_size, seed = params[split]
        name = f"fashion_synth_{split}"
        # json_file is set by the loader: the generator decides the file name.
        _register(name, _synth_loader(name, root, split, int(num_images), int(image_size),
                                      int(seed), skip_invalid), overwrite)


def register_all_from_cfg(cfg: Any) -> None:
    """Re-register the built-ins for ``cfg``'s DATASETS.ROOT, DATASETS.SYNTH and SKIP_INVALID."""
    s = cfg.DATASETS.SYNTH
    synth = {"train": (s.NUM_TRAIN, s.IMAGE_SIZE, s.SEED), "val": (s.NUM_VAL, s.IMAGE_SIZE, s.SEED)}
    register_all(
        cfg.DATASETS.ROOT,
        skip_invalid=bool(cfg.DATASETS.SKIP_INVALID),
        synth=synth,
        overwrite=True,
    )
