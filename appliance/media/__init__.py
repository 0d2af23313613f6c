"""Media: the pjsua2 worker processes and the main-process side that drives them.

The main process imports ``engine``, ``protocol``, ``client``, ``supervisor``, ``pool``,
``null`` and ``tts``; only ``media.worker`` (a separate process) imports pjsua2.
"""
