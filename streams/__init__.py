"""Stream processing: the Faust app, its agents, and the pure logic they run."""
