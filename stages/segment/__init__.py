"""Stages that cut a sample into children: recordings into segments (and, later, videos into clips)."""
