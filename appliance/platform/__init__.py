"""Host integration: systemd notify + watchdog (``systemd``), LEDs and button (``gpio``).

Both are L1 I/O modules: ``systemd`` owns the notify socket, ``gpio`` owns gpiozero. Neither
imports the other or anything above L0; ``appliance.app`` wires them in.
"""
