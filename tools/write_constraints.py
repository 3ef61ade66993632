"""Write constraints.txt: the exact installed versions of effdetmask[test] and all it needs.

Run after upgrading a dependency and passing the tests:

    python3 tools/write_constraints.py > constraints.txt

The set is the dependency closure of the installed ``effdetmask`` distribution with its ``test``
extra. torch's platform-specific companions (CUDA libraries, triton) are left out, so the file
constrains a CPU-only torch build as well as a CUDA one.
"""

import importlib.metadata
import re
import sys

from packaging.requirements import Requirement

HEADER = """\
# The exact set this project is tested with (CI and the README's commands install with it):
#   python3 -m pip install -c constraints.txt -e ".[test]"
# setup.cfg declares version ranges so that `pip install -e .` keeps a user's own torch build;
# this file pins the whole tested set, direct and transitive, for reproducible installs.
# torch's platform-specific companions (CUDA libraries, triton) are left to torch.
# Regenerate after an upgrade: python3 tools/write_constraints.py > constraints.txt
"""
LEFT_TO_TORCH = re.compile(r"^(nvidia-|cuda-|triton$|setuptools$)")


def normalized(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(name: str, extras: tuple = ()) -> dict:
    """``{normalized name: version}`` of ``name`` and every installed requirement, recursively."""
    found = {}
    pending = [(name, extras)]
    while pending:
        current, current_extras = pending.pop()
        key = normalized(current)
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(current)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        found[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = ("",) + tuple(current_extras)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted):
                pending.append((req.name, tuple(req.extras)))
    return found


def main() -> int:
    closure = installed_closure("effdetmask", ("test",))
    if "effdetmask" not in closure:
        print("effdetmask is not installed: run pip install -e '.[test]' first", file=sys.stderr)
        return 1
    del closure["effdetmask"]
    sys.stdout.write(HEADER)
    for key in sorted(closure):
        if not LEFT_TO_TORCH.match(key):
            sys.stdout.write(f"{key}=={closure[key]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
