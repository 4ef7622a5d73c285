"""Benchmarks for session_core, run against a local Firestore emulator in Datastore mode."""
