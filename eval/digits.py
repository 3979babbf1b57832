"""The handwritten-digits report (lavit/evaluation/digits.py): caption, VQA, reconstruction and
text-to-image on held-out digits, judged by a classifier fit on the train split.

    python eval/digits.py --data data/digits --model runs/digits/pipeline --out outputs/eval/digits
"""

import sys

from lavit.evaluation.digits import main

if __name__ == "__main__":
    sys.exit(main())
