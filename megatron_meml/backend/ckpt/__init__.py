"""Checkpoints: atomic, checksummed training checkpoints with every RNG and the stage's state (``checkpoint.py``,
file format and integrity in ``checkpoint_io.py``), where initial weights come from (``checkpoint_source.py``), and
conversion from and to Hugging Face checkpoints at any TP / PP (``hf_convert.py``)."""
