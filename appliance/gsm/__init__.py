"""The GSM/LTE modem: SMS over AT commands in PDU mode, USSD, SIM and registration state.

Pure core (no I/O, no clock, no logging): ``alphabet`` (GSM-7/UCS-2, splitting), ``pdu``
(SMS TPDUs), ``at`` (framing, results, builders), ``urc`` (typed unsolicited codes), ``state``
(settings, snapshot, events) and ``errors``. I/O: ``channel`` (the serial port, one command in
flight) and ``modem`` (init, store-and-forward receive, sends, recovery). See modem.md.
"""
