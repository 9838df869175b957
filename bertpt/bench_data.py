"""``python -m bertpt.bench_data``: throughput of the data pipeline.

The command's code lives in :mod:`bertpt.benchmarks.data`.
"""

from bertpt.benchmarks.data import main

if __name__ == "__main__":
    main()
