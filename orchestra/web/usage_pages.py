"""Placeholder: filled in this session (see orchestra/web/__init__.py)."""
from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
