"""``python -m bertpt.bench_quality``: bertpt and a plain transformers loop learning at equal steps.

The command's code lives in :mod:`bertpt.benchmarks.quality`.
"""

from bertpt.benchmarks.quality import main

if __name__ == "__main__":
    main()
