"""``python -m bertpt.tokenizer``: train a tokenizer on a corpus.

The command's code lives in :mod:`bertpt.data.tokenizer`.
"""

from bertpt.data.tokenizer import main

if __name__ == "__main__":
    main()
