"""Dataset layouts: one module per layout family (asoca, imagecas, nnunet, folder, csv manifest,
coco2d, phantoms), `common` helpers, and the `registry` that `ingest` looks a layout up in.
Imports samtune.config and samtune.data only; a new layout (DICOM, npz) is one file + one entry."""
from samtune.data.layouts.registry import LAYOUTS, ingest, list_layouts

__all__ = ["LAYOUTS", "ingest", "list_layouts"]
