"""The `reranker` command (reranker.cli): one entry point above the gateway, the worker and the tools."""
