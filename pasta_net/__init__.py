"""pasta-net: user-mode networking for unprivileged network namespaces and VMs.

Importing the package has no side effects; the program starts in :mod:`pasta_net.cli`.
"""

__version__ = "0.1.0"
