"""The demo: a fleet of worker processes tracing agent runs whose span starts and ends land on
random workers (as Temporal routes activities), against the local SGP server or real SGP.

Run it with ``scripts/demo.sh`` (or ``python -m demo --help``).
"""
