"""Outcomes -> journal / report / progress, and the commands that run a campaign."""
