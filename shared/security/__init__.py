"""Who may do what in a federation: roles, identities, permissions (pure, no I/O)."""
