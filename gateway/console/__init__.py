"""Security-officer and operator console: static pages served by the gateway plus their JSON API.

Its routes live with every other resource in gateway/routes/ (the pages: routes/console.py); see docs/CONSOLE.md.
"""
