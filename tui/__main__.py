"""`python -m tui [CONFIG] [--control PATH]` (same as `pooler tui`)."""

from pooler.cli import tui

if __name__ == "__main__":
    tui()
