"""Templates: content-addressed root filesystems built from a base and cached steps, and the
store that keeps them. See docs/templates.md.

    store = TemplateStore(home)
    resolved = store.resolve("datasci")        # or "sha256:<digest>"
    resolved.lowers                            # layer roots, topmost first

The build engine (:mod:`.build`) is imported on its own: it needs the manager, which needs
the providers, which need this store.
"""

from .model import (
    BaseInfo,
    LayerInfo,
    Step,
    TemplateManifest,
    check_name,
    check_steps,
    parse_step,
)
from .store import ResolvedTemplate, TemplateGcReport, TemplateStore, find_python

__all__ = [
    "BaseInfo",
    "LayerInfo",
    "ResolvedTemplate",
    "Step",
    "TemplateGcReport",
    "TemplateManifest",
    "TemplateStore",
    "check_name",
    "check_steps",
    "find_python",
    "parse_step",
]
