"""``python -m analyses [--quick|--full] [--force] [--only NAME ...]``: what ``make figures`` runs."""

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from analyses.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
