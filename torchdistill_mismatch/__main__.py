"""``python -m torchdistill_mismatch``: the same command line as ``torchdistill-mismatch`` (works under torchrun)."""
import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
