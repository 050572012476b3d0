"""``python -m sdar`` — the same as the ``sdar`` console script."""
from sdar.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
