"""Zero-shot grounding evaluation (lavit/evaluation): `torchrun --nproc_per_node=N eval/grounding.py --config ...`.

Runs as plain `python eval/grounding.py` too; see `--help` and configs/eval/.
"""

import sys

from lavit.evaluation import main

if __name__ == "__main__":
    sys.exit(main("grounding"))
