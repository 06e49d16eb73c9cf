"""The dataset layouts agejobs can import, by name, each importer loaded only when used.

`import_layout("morph", "s3://bucket/morph", SplitSpec("subject"), csv_name=...)` imports
the module of that layout and calls its importer with the source, the split and the layout's
own options (see each module's docstring for its layout and options).
"""

from __future__ import annotations

import importlib

from agejobs.datasets.manifest import ImportResult, SplitSpec

# layout name -> (module, importer function)
IMPORTERS = {
    "utkface": ("agejobs.datasets.utkface", "import_utkface"),
    "morph": ("agejobs.datasets.morph", "import_morph"),
    "megaage": ("agejobs.datasets.megaage", "import_megaage"),
    "aaf": ("agejobs.datasets.aaf", "import_aaf"),
    "fgnet": ("agejobs.datasets.fgnet", "import_fgnet"),
    "appa-real": ("agejobs.datasets.appa_real", "import_appa_real"),
    "imdb-wiki": ("agejobs.datasets.imdb_wiki", "import_imdb_wiki"),
}
LAYOUTS = tuple(IMPORTERS)


def import_layout(layout: str, source: str, split: SplitSpec = SplitSpec(), **options) -> ImportResult:
    """Import `source` (a local directory or URI) laid out as `layout` into a manifest."""
    if layout not in IMPORTERS:
        raise ValueError(f"unknown dataset layout {layout!r}, expected one of {LAYOUTS}")
    module_name, function_name = IMPORTERS[layout]
    importer = getattr(importlib.import_module(module_name), function_name)
    return importer(source, split, **options)
