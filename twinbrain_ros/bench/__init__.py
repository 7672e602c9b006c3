# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Benchmarks behind ``twinbrain bench ...``: a human table, and with ``--json`` a JSON last line."""
