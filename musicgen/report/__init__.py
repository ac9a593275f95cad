"""Reports for people: the listening gallery (self-contained HTML) and its static figures."""
