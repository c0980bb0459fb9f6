"""``python -m timm_mimo export ...``: export a train.py checkpoint to a Hub folder (see :mod:`timm_mimo.hub`)."""
import sys

from timm_mimo.hub import main

if __name__ == '__main__':
    sys.exit(main())
