"""Zero-shot text2image evaluation (lavit/evaluation): `torchrun --nproc_per_node=N eval/text2image.py --config ...`.

Runs as plain `python eval/text2image.py` too; see `--help` and configs/eval/.
"""

import sys

from lavit.evaluation import main

if __name__ == "__main__":
    sys.exit(main("text2image"))
