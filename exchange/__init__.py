"""The exchange protocol, sans I/O: what to ask each node, how to validate its answer, how to
combine and mask, what the audit log records. No sockets, no gRPC, no databases here."""
