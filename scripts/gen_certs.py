"""Make the TLS certificates, SuperNode keys and SAE certificates of a deployment.

A thin command line over :mod:`qfl.pki` (see its docstring for every file written):
``python scripts/gen_certs.py [DIR] [--san HOST] [--nodes N] [--sae ID ...] [--force]``.
"""

from qfl.pki import generate, main

__all__ = ["generate", "main"]

if __name__ == "__main__":
    main()
