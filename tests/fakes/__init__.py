"""Local fakes of external services, for tests (see `llm_servers`)."""

# `llm_servers` routes to vendor modules that build on its helpers (`openai_responses`, `gemini_json`):
# loading it first, whichever of them a test imports, keeps the import order that works.
from tests.fakes import llm_servers as llm_servers
