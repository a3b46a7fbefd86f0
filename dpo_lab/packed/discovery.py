"""Hydra finds the packed launcher under an editable install too.

Hydra lists its plugins by walking the ``hydra_plugins`` namespace package's folders (``pkgutil`` over
``hydra_plugins.__path__``). A wheel installs ``hydra_plugins/dpo_lab_packed_launcher`` into site-packages,
where that walk finds it. ``pip install -e .`` serves the package through an import hook instead: it imports,
but the walk does not see it, so ``hydra/launcher=packed`` fails with "Could not find
'hydra/launcher/packed'" whenever the command runs outside the checkout. Adding the checkout's
``hydra_plugins`` folder to the namespace's search path makes both installs look alike to Hydra.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PLUGIN = "hydra_plugins.dpo_lab_packed_launcher"


def make_packed_launcher_visible() -> bool:
    """Put the folder holding dpo_lab's launcher plugin on ``hydra_plugins.__path__`` if Hydra's listing would
    miss it; True if the path had to change."""
    try:
        import hydra_plugins
    except ImportError:  # no hydra_plugins namespace at all: not installed with dpo_lab
        return False
    spec = importlib.util.find_spec(PLUGIN)
    if spec is None or spec.origin is None:
        return False
    folder = str(Path(spec.origin).resolve().parent.parent)
    if folder in {str(Path(p).resolve()) for p in hydra_plugins.__path__}:
        return False
    hydra_plugins.__path__.append(folder)
    return True
