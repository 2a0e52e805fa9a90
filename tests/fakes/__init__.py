"""Local fakes of external services, for tests: the model vendors' HTTP APIs (`llm_servers`, one
module per wire format) and Claude Code's SDK transport (`fake_claude`)."""
