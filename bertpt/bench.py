"""``python -m bertpt.bench``: training-step throughput against transformers' BertForPreTraining.

The command's code lives in :mod:`bertpt.benchmarks.speed`.
"""

from bertpt.benchmarks.speed import main

if __name__ == "__main__":
    main()
