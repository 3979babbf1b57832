"""Zero-shot caption evaluation (lavit/evaluation): `torchrun --nproc_per_node=N eval/caption.py --config ...`.

Runs as plain `python eval/caption.py` too; see `--help` and configs/eval/.
"""

import sys

from lavit.evaluation import main

if __name__ == "__main__":
    sys.exit(main("caption"))
