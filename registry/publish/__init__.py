"""`mta publish`: keep a folder or S3 prefix of per-user PEFT folders, plus a manifest, in
sync with the registry for serving engines that load adapters by name. `users` plans and
runs a round (or watches), `targets` writes to a target chosen by URL scheme through the
storage layer's scheme registry.
"""
