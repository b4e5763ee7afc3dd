"""The bus between replicas (NATS): owners publish their sessions, relays feed remote viewers."""
