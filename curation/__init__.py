"""The curation pipeline: sources -> fetch -> filters -> dedup -> decontamination -> shards."""

import os

# img2dataset imports albumentations, which checks the network for a newer version at import time.
# Pipeline workers must not reach any host but the ones they are told to fetch from.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
