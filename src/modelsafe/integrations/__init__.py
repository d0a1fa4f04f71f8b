"""Thin adapters that plug modelsafe into the trainers people already use (imported on demand only)."""
