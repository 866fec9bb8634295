"""The compose file's topology as local processes: ``bruto-stack up|down|status``."""
