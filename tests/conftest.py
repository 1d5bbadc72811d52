import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("MEML_DATA", os.path.join(ROOT, "..", "shared", "data"))
