"""Exports of built or loaded weights into other runtimes' formats."""
