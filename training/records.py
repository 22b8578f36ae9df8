"""Temporary: moved to common/io.py; goes once every caller imports it from there."""
from common.io import append_record, file_sha256, read_records  # noqa: F401
