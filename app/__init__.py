"""The top floor: the `xgate` command, process launching, the dev federation, the demo.

Nothing below imports from here (import-linter contract `layers` in pyproject.toml).
"""
