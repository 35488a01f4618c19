"""The SQL archive: call and thread records, roll-ups, reports, retention (issue #15)."""
