"""``python -m bertpt.plot``: draw a run's curves, or several runs overlaid.

The command's code lives in :mod:`bertpt.runs.plots`.
"""

from bertpt.runs.plots import main

if __name__ == "__main__":
    main()
