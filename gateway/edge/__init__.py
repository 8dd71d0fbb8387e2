"""Edge logic: decides at the gateway what is really wrong, and says so once."""
