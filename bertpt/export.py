"""``python -m bertpt.export``: export a checkpoint or run folder as a Hugging Face BERT folder.

The command's code lives in :mod:`bertpt.training.export`.
"""

from bertpt.training.export import main

if __name__ == "__main__":
    main()
