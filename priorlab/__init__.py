"""The `priorlab` command: one entry point for the service's processes, the client and the offline tools."""
