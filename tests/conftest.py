"""Shared test settings: float32 everywhere (as in production), fixed keys."""
import os
import sys

# Tests import the packages from the checkout even without an editable install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
