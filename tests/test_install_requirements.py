"""setup.cfg declares ranges that leave a user's torch alone; constraints.txt pins a set in them."""

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def declared_requirements():
    """Requirements of ``install_requires`` and the ``test`` extra, as written in setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    lines += cfg["options.extras_require"]["test"].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def constrained_versions():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_torch_and_friends_are_ranges_not_pins():
    by_name = {req.name: req for req in declared_requirements()}
    for name in ("torch", "torchvision", "timm", "pycocotools", "faster-coco-eval"):
        operators = {spec.operator for spec in by_name[name].specifier}
        assert "==" not in operators, f"{name} is pinned in setup.cfg: {by_name[name]}"
        assert ">=" in operators, f"{name} has no lower bound: {by_name[name]}"


def test_constraints_pin_every_declared_requirement_inside_its_range():
    pins = constrained_versions()
    for req in declared_requirements():
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        assert key in pins, f"constraints.txt has no version for {req.name}"
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[key]}, outside setup.cfg's {req}"
        )


def test_ci_and_readme_install_with_the_constraints():
    assert "-c constraints.txt" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    installs = [line for line in readme.splitlines() if line.startswith("python3 -m pip install")]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
