"""Where the checkout is, for the commands that read its ``examples/`` or write under its ``runs/``.

The package is installed editable (``pip install -e .``, what ``make install`` does), so the checkout is the folder
above ``megatron_meml/``. Commands that take a path from the user resolve it against the working directory as usual;
only their defaults (``examples/quickstart/config.yaml``, ``examples/scaling/``, ``runs/...``) come from here.
"""
from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
