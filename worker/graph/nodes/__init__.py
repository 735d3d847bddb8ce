"""The node library: one small module per family of node kinds, all vectorised over a whole batch."""
