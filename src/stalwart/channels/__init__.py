"""The supervisor's channels to the world: the notify socket (trainer -> supervisor), the
advice file (supervisor -> trainer), the control socket (operator) and systemd's notify protocol.
"""
