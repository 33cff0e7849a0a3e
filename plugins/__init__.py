"""musicbench's built-in plugins, one sub-package per family.

Each family registers through the ``musicbench`` entry-point group, exactly like a third-party
package: see ``[project.entry-points.musicbench]`` in pyproject.toml. Components are registered
by import string so that ``musicbench list`` does not import torch.
"""
