"""pytest set-up shared by tests/ and the notebooks in book/ (run with `pytest --nbval`).

Environment variables set here are inherited by the Jupyter kernels nbval starts, so the notebooks
run exactly as scripts/build_notebooks.py ran them when it stored their outputs.
"""

import os

os.environ["TQDM_DISABLE"] = "1"  # progress bars must never appear in compared outputs
