"""Bank versions: the immutable, numbered sets of anchors (meta-LoRAs with their embeddings
and HNSW index) that users fuse from. `versions` looks versions up, lists them, moves
aliases and publishes a new version in one transaction; `build` selects anchors from a
user file and trains them (`build_bank`) or takes externally trained PEFT folders
(`push_bank`); `anchor_training` trains one anchor's meta-LoRA, here or in a Ray task
(`jobs.bank_ray`).
"""
