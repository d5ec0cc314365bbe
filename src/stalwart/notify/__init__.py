"""Notifications through apprise: the config section, the messages (pure), the sender thread.

`stalwart.notify.config` loads nothing heavy; apprise is imported only when URLs are
configured (`stalwart[notify]`).
"""
