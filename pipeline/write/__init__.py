"""Write: labeled chunks → committed files, and the run's records beside them (run manifest, unit
records, exactly-once progress)."""
