"""`orchestra web`: a read-only dashboard of the queue and its JSON API (docs/web.md).

Shape: `app.py` builds the Starlette application from the routes each page module exports
(`overview`, `queue_pages`, `tasks_pages`, `jobs_pages`, `usage_pages`: each page with its /api/
twin); `viewer.py` decides who is looking (a trusted proxy's header, or nobody) and what stands in
for what they may not see; `render.py` holds the Jinja2 environment and the filters every template
shares; `params.py` reads the query parameters the same way for every route; `live.py` streams
page fragments as server-sent events; `charts.py` draws the usage charts as SVG. Every page reads
the database through the same services the CLI uses, so the numbers cannot disagree.
"""
