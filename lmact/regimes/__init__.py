"""The episode loops of each setting."""
