"""``python -m bertpt.data_report``: what the data pipeline makes of a corpus, before training.

The command's code lives in :mod:`bertpt.data.stats`.
"""

from bertpt.data.stats import main

if __name__ == "__main__":
    main()
