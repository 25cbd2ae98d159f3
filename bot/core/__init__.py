"""The core: domain values, ports, use cases, events and their reactions, the policy and every
user-facing sentence. It imports no platform, HTTP or database library, and neither ``handlers``
nor ``storage``: an import contract checks every module here, including new ones."""
