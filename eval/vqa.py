"""Zero-shot vqa evaluation (lavit/evaluation): `torchrun --nproc_per_node=N eval/vqa.py --config ...`.

Runs as plain `python eval/vqa.py` too; see `--help` and configs/eval/.
"""

import sys

from lavit.evaluation import main

if __name__ == "__main__":
    sys.exit(main("vqa"))
