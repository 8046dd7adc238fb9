"""`mta publish`: keep a folder or S3 prefix of versioned PEFT folders, plus a manifest, in
sync with the registry for serving engines that load adapters by name. `request` is what a
round asks for, `selection` which users it covers, `placement` which folders it writes,
keeps or evicts, `manifest` what it records, `users` runs a round (or watches), and
`targets` writes to a target chosen by URL scheme through the storage layer's registry.
"""
