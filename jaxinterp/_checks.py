"""Cheap trace-time shape checks that raise plain ``ValueError`` with the caller's name."""

from __future__ import annotations


def split_field_shape(
    shape: tuple[int, ...], what: str
) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Split a displacement-field shape ``(*batch, *spatial, ndim)`` into its parts.

    ``ndim`` is the last axis and must be 2 or 3; the ``ndim`` axes before it are spatial.
    """
    if len(shape) < 3:
        raise ValueError(f"{what} must have shape (*batch, *spatial, ndim), got {shape}")
    ndim = shape[-1]
    if ndim not in (2, 3):
        raise ValueError(
            f"{what} must end with an axis of size 2 or 3 (the vector components), "
            f"got shape {shape}"
        )
    if len(shape) < ndim + 1:
        raise ValueError(f"{what}: a {ndim}D field needs {ndim} spatial axes, got shape {shape}")
    return tuple(shape[: -ndim - 1]), tuple(shape[-ndim - 1 : -1]), ndim


def check_same_shape(a_shape: tuple[int, ...], b_shape: tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` unless the two shapes are equal."""
    if tuple(a_shape) != tuple(b_shape):
        raise ValueError(f"{what}: shapes differ, {tuple(a_shape)} vs {tuple(b_shape)}")
