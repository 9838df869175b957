"""``python -m bertpt.bench_tokenizer``: WordPiece training time against the tokenizers trainer.

The command's code lives in :mod:`bertpt.benchmarks.tokenizer`.
"""

from bertpt.benchmarks.tokenizer import main

if __name__ == "__main__":
    main()
