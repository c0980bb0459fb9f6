"""``python -m timm_mimo``: ``export`` (a train.py checkpoint to a Hub folder with its card), ``configs`` (the shipped
recipes), ``run`` (timm's own scripts with the timm_mimo models registered); ``--version``, ``--help`` on each. See
:func:`timm_mimo.hub.main`."""
import sys

from timm_mimo.hub import main

if __name__ == '__main__':
    sys.exit(main())
