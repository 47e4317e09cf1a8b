"""The dashboard's panes and widgets."""
