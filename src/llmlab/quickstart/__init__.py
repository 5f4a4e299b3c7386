"""The quickstart: every stage of llmlab, end to end, on an embedded default source."""
