"""Providers: what Sluicegate calls out to (language models today)."""
