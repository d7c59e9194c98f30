"""Editing: the head model of a base (its active edits replayed), new edits computed on it and
written in one short transaction each, base models registered, edit files imported."""
