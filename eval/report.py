"""One Markdown table from several evaluation reports: ``python eval/report.py OUT/*/report.json``."""

import sys

from lavit.evaluation import summarize

if __name__ == "__main__":
    print(summarize(sys.argv[1:]), end="")
