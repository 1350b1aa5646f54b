"""The snapshot as phases: preflight -> fork (one stop window) -> child -> dump -> store.

Never prints, never imports click or rich: it returns results or raises a
snapcore.errors.SnapcoreError.
"""
