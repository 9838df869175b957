"""``python -m bertpt.probe``: probe an encoder on a labelled task, against random init and a
bag-of-words floor.

The command's code lives in :mod:`bertpt.probing.probe`.
"""

from bertpt.probing.probe import main

if __name__ == "__main__":
    main()
