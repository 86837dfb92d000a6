"""One module per endpoint group: transport only; schemas in ``gateway.protocol``."""
