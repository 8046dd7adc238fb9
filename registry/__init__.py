"""The SQL registry and the service layer.

Import the API from `mta.registry.service` (functions), `mta.registry.context`
(`RegistryContext`), `mta.registry.entities` (returned dataclasses) and
`mta.registry.errors`. This package module imports nothing, so `mta.registry.errors` stays
cheap for the CLI's error mapping.
"""
