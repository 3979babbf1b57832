"""Zero-shot visual_prompts evaluation (lavit/evaluation): `torchrun --nproc_per_node=N eval/visual_prompts.py --config ...`.

Runs as plain `python eval/visual_prompts.py` too; see `--help` and configs/eval/.
"""

import sys

from lavit.evaluation import main

if __name__ == "__main__":
    sys.exit(main("visual_prompts"))
