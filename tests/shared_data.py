"""Where the shared corpus lives: ../shared beside the repository (as on developer machines and in
CI), or L7FP_SHARED. Tests that need it fail loudly if it is missing rather than skipping."""
import os
from pathlib import Path

SHARED = Path(os.environ.get("L7FP_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CORPUS = SHARED / "corpus"
ISTIO_GOLDEN = SHARED / "istio-golden"


def require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the shared corpus must sit beside the repository "
                                f"(or set L7FP_SHARED)")
    return path
