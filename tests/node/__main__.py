"""python -m tests.node build   # installs the Debian packages, builds (or finds cached) the node binaries
                               # and the controller image; prints where they are"""

from __future__ import annotations

import sys

from .images import build_controller_image
from .node import ensure_node_binaries, ensure_packages


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_packages()
    print(ensure_node_binaries())
    print(build_controller_image())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
