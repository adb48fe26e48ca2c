"""`python -m flexlb` is the same as the `flexlb` console script."""

from flexlb.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
