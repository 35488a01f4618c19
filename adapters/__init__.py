"""Provider adapters: one module per provider, each implementing a port of `gateway.ports`.

Adapters import only `gateway.ports`, `gateway.domain.*` and `gateway.errors` from the
project; only the composition root (`gateway/app/gateway.py`) knows which adapter is in use.

- `adapters.sandbox`: in-memory twins of the ports (demo, replay, contract tests).
- `adapters.carrier_http`: profile-driven HTTP lettering adapter for SKT, KT, LG U+ and
  app-push providers.
"""
