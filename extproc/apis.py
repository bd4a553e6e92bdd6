"""The APIs a client or a provider may speak: the names translation pairs and provider kinds share."""

OPENAI_CHAT = "openai_chat"
ANTHROPIC_MESSAGES = "anthropic_messages"
BEDROCK_CONVERSE = "bedrock_converse"
