"""Source readers: each input row becomes a *fragment* keyed by the picture it shows, or a counted drop.

A fragment is a plain dict::

    {"key": "coco:391895" | "vg:12" | "url:<stable hash of url>",   # the picture
     "source": "<source name>", "dataset": "coco", "id": "391895",
     "rows": 1,                        # input rows this fragment accounts for (0 for lookup metadata)
     "ord": [..],                      # sort key inside the picture (annotation id, region area, ...)
     "url": str|None, "local": str|None, "captions": [str], "qa": [dict], "link": {...}}

`curation.sources.group.assemble_picture` merges the fragments of one key into one record. Readers stream:
TSV files through Beam's splittable ReadFromText (line based, any size), JSON files with ijson (constant
memory per file; one worker streams each JSON file, whose size then bounds only that worker's time).
"""

from curation.sources.jsonfiles import read_coco, read_karpathy, read_vg, read_vqav2
from curation.sources.tsv import parse_tsv_line

__all__ = ["parse_tsv_line", "read_coco", "read_vg", "read_karpathy", "read_vqav2"]
