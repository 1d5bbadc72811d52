import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
DATA = os.environ.get("MEML_DATA", os.path.join(ROOT, "..", "shared", "data"))
