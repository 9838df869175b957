"""``python -m bertpt.sweep``: summarise a sweep folder: a row per job.

The command's code lives in :mod:`bertpt.runs.sweeps`.
"""

from bertpt.runs.sweeps import main

if __name__ == "__main__":
    main()
