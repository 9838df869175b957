"""``python -m bertpt.corpus``: build the offline default corpus.

The command's code lives in :mod:`bertpt.data.corpus`.
"""

from bertpt.data.corpus import main

if __name__ == "__main__":
    main()
