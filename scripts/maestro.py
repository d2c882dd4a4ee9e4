#!/usr/bin/env python3
"""Shim so the seed's `maestro.py ...` command lines work verbatim."""
from orchestra.cli.maestro import main

if __name__ == "__main__":
    main()
