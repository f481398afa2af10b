"""Alembic environment and versions: the schema only changes through here."""
