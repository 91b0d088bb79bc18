"""The archive's DICOM network stack: the upper layer (PS3.8) and DIMSE (PS3.7) on TCP or
DICOM TLS (PS3.15 Annex B), for both sides of an association.

- ``dul.py``: the upper layer's PDUs (A-ASSOCIATE-RQ/-AC/-RJ, P-DATA-TF, A-RELEASE, A-ABORT)
  and the DIMSE command sets (group 0000, implicit VR little endian); pure bytes in, bytes out.
- ``acceptor.py``: the accepting side: the listener with its per-peer and total connection
  caps, the ARTIM and PDU deadlines, the TLS handshake, one thread per association, the
  association negotiation (AE checks, certificate bindings) and the PDU loop.
- ``requestor.py``: the requesting side: associations the archive opens (C-MOVE
  sub-associations, the router's C-STOREs, benchmark clients) and the C-STORE/C-FIND request
  messages (``send_store`` also sends the C-GET sub-operations on an accepted association).
- ``tls.py``: DICOM TLS: the security profile of the DICOM endpoints, their server and
  client SSL contexts, peer certificates and their binding to calling AE titles.
- ``sockets.py``: socket options every DICOM connection gets (TCP_NODELAY).

What the package does not do: store, index, publish or read anything. There is no Kafka,
no object storage, no index and no dataset decoding here (a Part 10 file is sent as stored,
past its File Meta Information); an
endpoint (``ingest/scp.py``, ``query/scp.py``, ``processors/router/sender.py``) subclasses
``acceptor.Association`` or drives a ``requestor.Requestor`` and hands the work to its own
handlers. The package imports none of ``ingest``, ``query``, ``processors``, ``archive``,
``cli`` or ``stack``, nor a Kafka, index or object-storage client
(tests/unit/test_dicomnet_layering.py checks it); of ``common`` it uses the project CA
(``common/pki.py``).
"""
