"""The run as plain code: ``codegen`` (image script), ``codegen_text`` (text script), their shared ``sections``,
and ``notebook`` (a Jupyter notebook). Listed here: the names of these modules that other packages, pages and
tests use; the rest through their module."""
from .codegen import code_sections, generate_code
from .notebook import filename, cells

__all__ = sorted(name for name in dir() if not name.startswith("_"))
