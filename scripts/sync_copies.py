"""Copy the files that the Helm chart and the kustomize monitoring component ship from their one source.

Kustomize and Helm read only files inside their own directory, so each keeps a byte-for-byte copy (the
kustomize component's alerts and dashboard are rendered by observability/render_prometheusrule.py instead,
with kustomize variables for the job and the namespace):
- observability/alerts.yaml            -> charts/module-service-controller/files/alerts.yaml
- observability/grafana-dashboard.json -> charts/module-service-controller/files/grafana-dashboard.json
- manifests/crd/moduledeployments.yaml -> charts/module-service-controller/files/moduledeployments.yaml
- manifests/guard/validating_admission_policy.yaml -> charts/module-service-controller/files/guard.yaml

    python scripts/sync_copies.py           # rewrite the copies
    python scripts/sync_copies.py --check   # exit 1 if one is out of date (tests/render runs this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART_FILES = ROOT / "charts" / "module-service-controller" / "files"
COPIES: list[tuple[Path, Path]] = [
    (ROOT / "observability" / "alerts.yaml", CHART_FILES / "alerts.yaml"),
    (ROOT / "observability" / "grafana-dashboard.json", CHART_FILES / "grafana-dashboard.json"),
    (ROOT / "manifests" / "crd" / "moduledeployments.yaml", CHART_FILES / "moduledeployments.yaml"),
    (ROOT / "manifests" / "guard" / "validating_admission_policy.yaml", CHART_FILES / "guard.yaml"),
]


def stale() -> list[tuple[Path, Path]]:
    """The (source, copy) pairs whose copy differs from its source."""
    return [(src, dst) for src, dst in COPIES if not dst.exists() or dst.read_bytes() != src.read_bytes()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report copies that are out of date")
    args = parser.parse_args(argv)
    out_of_date = stale()
    for src, dst in out_of_date:
        rel_src, rel_dst = src.relative_to(ROOT), dst.relative_to(ROOT)
        if args.check:
            print(f"{rel_dst} is not a copy of {rel_src}: run python scripts/sync_copies.py", file=sys.stderr)
        else:
            dst.write_bytes(src.read_bytes())
            print(f"{rel_src} -> {rel_dst}")
    return 1 if args.check and out_of_date else 0


if __name__ == "__main__":
    sys.exit(main())
