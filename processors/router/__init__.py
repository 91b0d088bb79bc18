"""The DICOM router: rules decide, the log records every decision and attempt, senders forward."""
