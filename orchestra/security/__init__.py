"""Identity and the writes only the database's owner may make: see README "Security model"."""
