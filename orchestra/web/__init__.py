"""`orchestra web`: a read-only dashboard of the queue and its JSON API (docs/web.md).

Shape: `app.py` builds the Starlette application from the routes each page module exports
(`overview`, `queue_pages`, `tasks_pages`, `usage_pages`, `api`); `viewer.py` decides who is
looking (a trusted proxy's header, or nobody); `render.py` holds the Jinja2 environment and the
filters every template shares; `live.py` streams page fragments as server-sent events. Every page
reads the database through the same services the CLI uses, so the numbers cannot disagree.
"""
