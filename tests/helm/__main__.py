"""``python -m tests.helm build``: build or reuse the pinned helm and print its directory."""

from __future__ import annotations

import argparse
import sys

from . import ensure_helm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helm")
    parser.add_argument("cmd", choices=["build"])
    parser.parse_args(argv)
    print(ensure_helm().parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
