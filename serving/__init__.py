"""Serving MTA users: exact per-user adapters composed on demand (`composer`) behind one
OpenAI-compatible Ray Serve app (`app`). Imports the methods; nothing in mta/ or memgas/ imports it."""
