"""bertpt: pretrain BERT from raw text (masked LM + next-sentence prediction).

The commands users run are the top-level modules (``python -m bertpt.train``, ``bertpt.export``,
...); the machinery lives in sub-packages by role. ARCHITECTURE.md draws the map.
"""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"  # the Hydra configs, shipped in the package
