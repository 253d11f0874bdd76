"""Evaluation: caption metrics (official COCO toolkit pipeline, SPICE) and VQA accuracy, and `evaluate`'s
generation over eval shards with a training checkpoint. May import `shards` and `training`, never curation."""
