"""Small generic helpers shared by the package (atomic file writes, logging)."""

from .io import atomic_save_to_disk, atomic_write, atomic_write_bytes, atomic_write_text, replace_directory

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_save_to_disk", "replace_directory"]
