"""Volumes as users have them: IO (NIfTI/NRRD/MHA), `layouts/` (one module per dataset layout),
validation, intensity, slice conversion to COCO, the patient-level split, phantoms.
Imports config and atomic only."""
