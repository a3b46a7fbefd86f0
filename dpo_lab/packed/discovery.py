"""Hydra finds dpo_lab's plugins (packed launcher, Optuna and halving sweepers) under an editable install.

Hydra lists its plugins by walking the ``hydra_plugins`` namespace package's folders (``pkgutil`` over
``hydra_plugins.__path__``). A wheel installs ``hydra_plugins/dpo_lab_packed_launcher`` and
``hydra_plugins/dpo_lab_optuna_sweeper`` into site-packages, where that walk finds them. ``pip install -e .``
serves the packages through an import hook instead: they import, but the walk does not see them, so
``hydra/launcher=packed`` fails with "Could not find 'hydra/launcher/packed'" whenever the command runs
outside the checkout. Adding the folders holding the plugins to the namespace's search path makes both
installs look alike to Hydra. (An editable install made before a plugin was added does not map it at all;
it is found in the folder of one that is mapped.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PLUGINS = (
    "hydra_plugins.dpo_lab_packed_launcher",
    "hydra_plugins.dpo_lab_optuna_sweeper",
    "hydra_plugins.dpo_lab_halving_sweeper",
)


def make_plugins_visible() -> bool:
    """Put each folder holding one of dpo_lab's plugins on ``hydra_plugins.__path__`` where Hydra's listing
    would miss it; True if the path had to change."""
    try:
        import hydra_plugins
    except ImportError:  # no hydra_plugins namespace at all: not installed with dpo_lab
        return False
    changed = False
    for plugin in PLUGINS:
        spec = importlib.util.find_spec(plugin)
        if spec is None or spec.origin is None:
            continue
        folder = str(Path(spec.origin).resolve().parent.parent)
        if folder not in {str(Path(p).resolve()) for p in hydra_plugins.__path__}:
            hydra_plugins.__path__.append(folder)
            changed = True
    return changed


# the name dpo_lab.run calls
make_packed_launcher_visible = make_plugins_visible
