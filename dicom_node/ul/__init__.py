"""The node's own DICOM upper layer for receiving (PS3.8), the ``native`` engine.

    pdu       PDUs and their items: pure encode/parse functions and dataclasses
    dimse     DIMSE command sets (group 0000, implicit VR little endian)
    meta      the File Meta Information written before a received data set
    acceptor  one association, acceptor side: negotiation, C-ECHO, C-STORE
    server    the listener: accepts connections, a thread per association

Only the acceptor role, and only Verification and Storage: the sender stays on
pynetdicom (``dicom_node.scu``), and ``receive.engine: pynetdicom`` keeps
pynetdicom's SCP (``dicom_node.scp``) as a fallback.
"""
