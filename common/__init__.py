"""The bottom layer: pieces every package may import (errors, name lookup, files, keys,
placement, images). It imports nothing of ours; see docs/ARCHITECTURE.md."""
