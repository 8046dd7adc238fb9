"""The SQL registry and the service layer.

Import the API from `mta.registry.service` (the functions of the rooms `banks/`, `users/`,
`jobs/`, `publish/` and `maintenance/`, with the request and identity values),
`mta.registry.context` (`RegistryContext`), `mta.registry.entities` (returned dataclasses)
and `mta.registry.errors`. This package module imports nothing, so `mta.registry.errors`
stays cheap for the CLI's error mapping.
"""
