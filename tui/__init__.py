"""The pooler dashboard (Textual). Talks to a running pooler only over its control socket."""
