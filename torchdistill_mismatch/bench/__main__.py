"""``python -m torchdistill_mismatch.bench``: the same as ``torchdistill-mismatch bench``."""
import sys

from .cli import standalone

sys.exit(standalone())
