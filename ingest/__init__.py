"""The DICOM receive path: C-ECHO and C-STORE SCP (and later STOW), with its durability contract."""
