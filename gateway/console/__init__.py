"""Security-officer and operator console: static pages served by the gateway plus their JSON API.

`gateway.console.routes.mount_console(app, ...)` mounts both; see docs/CONSOLE.md.
"""
