"""Leaderboard, tables, plots and the regression gate, derived from run records."""
