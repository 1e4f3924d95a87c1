"""The trainer each container runs: `python -m convit.train --job FILE` (see convit/train/__main__.py)."""
