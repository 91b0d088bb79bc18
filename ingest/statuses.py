"""C-STORE statuses answered by the ingest SCP (PS3.4 Annex B.2.3 and PS3.7 Annex C).

Refused (A7xx) statuses are retryable: the sender should try again later. Error (A9xx, Cxxx)
statuses tell the sender the object itself is the problem.
"""

SUCCESS = 0x0000
# Refused: Out of Resources. Our dependencies (disk, event log) could not make the object durable.
OUT_OF_RESOURCES_STORAGE = 0xA700
OUT_OF_RESOURCES_EVENT_LOG = 0xA710
# Error: Data Set does not match SOP Class (dataset SOP class/instance differs from the command).
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
# Error: Cannot understand (C000-CFFF), with our sub-codes.
CANNOT_UNDERSTAND_MISSING_UID = 0xC001
CANNOT_UNDERSTAND_INVALID_UID = 0xC002
CANNOT_UNDERSTAND_UNDECODABLE = 0xC003
# Refused: the object exceeds the configured size limit (not retryable as is; A7xx because
# PS3.4 has no better class for a resource limit of the receiver).
OUT_OF_RESOURCES_OBJECT_TOO_LARGE = 0xA720
# Refused: a Deflated Explicit VR Little Endian dataset inflates beyond the configured bound
# (STRATA_MAX_INFLATED_BYTES; a deflate bomb). Not retryable as is, like A720.
OUT_OF_RESOURCES_INFLATED_TOO_LARGE = 0xA721
# Refused: synchronous geo-redundancy (docs/dr.md): the instance is stored here but the second
# site did not confirm it in time. Retryable: PS3.4 B.2.3 gives C-STORE only A7xx (Refused: Out
# of Resources) for "try again later"; A9xx and Cxxx say the object itself is wrong.
OUT_OF_RESOURCES_PEER_UNCONFIRMED = 0xA730
