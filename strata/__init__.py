"""Strata, an event-sourced medical imaging archive.

Installed, every part of the archive lives under this one namespace (strata.ingest,
strata.query, ...). In the repository the folders stay at the top level; strata/ holds a
link to each, so the same imports work from a checkout and from an installed package."""
