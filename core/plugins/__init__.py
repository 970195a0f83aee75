"""In-tree plugins live in subpackages of this package (installed from plugins/<name>/)."""
