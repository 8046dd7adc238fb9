"""Work over many users or anchors: `bulk` selects users and runs fuse/adapt one user at a
time with per-user outcomes (locally), `ray_runner` runs the same units on Ray actors,
`bank_ray` trains a bank's anchors as Ray tasks, and `ray_cluster` connects to Ray and
keeps a machine-local registry off remote nodes.
"""
