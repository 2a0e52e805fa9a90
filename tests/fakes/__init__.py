"""Local fakes of external services, for tests (see `llm_servers`)."""
