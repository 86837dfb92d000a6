"""The live HTTP API: OpenAI-compatible, personalized chat completions with token
streaming, API keys, and a user's memory and sessions (`vars gateway`)."""
