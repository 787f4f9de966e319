"""Event contracts: what producers send and what every consumer may rely on."""
