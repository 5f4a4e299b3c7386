"""llmlab: the whole life of a language model, from a web crawl to a chat, in one hackable project."""

__version__ = "0.1.0"
