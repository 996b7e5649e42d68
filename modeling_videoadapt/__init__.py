"""videoadapt: video-LLM adaptation methods (PAVE, REEF, DynFocus, Compact) as transformers models.

Importing the package registers every videoadapt config, model and processor with the transformers Auto
classes (see `videoadapt._auto`).
"""

__version__ = "0.1.0"

from videoadapt._auto import PATCH_REPO_ROW, REGISTRY, ModelRow, register, register_all, registered_rows  # noqa: E402


register_all(REGISTRY)
register(PATCH_REPO_ROW)

__all__ = ["REGISTRY", "ModelRow", "__version__", "registered_rows"]
