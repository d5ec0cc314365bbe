"""Pure decisions: no I/O, no clock of their own, and imports of only the standard library,
pydantic and `stalwart.types`/`clock`/`errors` (tests/test_import_rules.py holds them to it).

Each module owns its config section.
"""
