#!/usr/bin/env python3
"""Shim so the seed's `orchestra_registry.py ...` command lines work verbatim."""
from orchestra.cli.registry import main

if __name__ == "__main__":
    main()
