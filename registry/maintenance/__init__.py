"""Registry-wide upkeep, one command per module: `init` creates or migrates the schema and
the store (`mta init`), `report` counts bytes per kind and user against one LoRA per user
(`mta storage report`), `fsck` checks every referenced blob (`mta fsck`), `gc` reclaims
what nothing serves (`mta gc`).
"""
