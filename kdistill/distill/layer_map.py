"""Which teacher layer each student layer learns from.

Layers are numbered from 1 (layer 0 is the embedding output), as in the TinyBERT paper: uniform 6->3 maps
student 1,2,3 to teacher 2,4,6; 12->4 maps 3,6,9,12.
"""

from __future__ import annotations

from kdistill.errors import KdistillError


class LayerMapError(KdistillError, ValueError):
    pass


def absolute_layer(layer: int, teacher_layers: int) -> int:
    """A teacher layer given 1-based, or counted from the last (-1: the last), as its 1-based index."""
    if not (1 <= layer <= teacher_layers or -teacher_layers <= layer <= -1):
        raise LayerMapError(f"{layer} is not a teacher layer (1..{teacher_layers}, or -1..-{teacher_layers} counting "
                            "from the last)")
    return layer if layer > 0 else teacher_layers + 1 + layer


def resolve_layer_map(spec, student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based) for each student layer 1..student_layers."""
    if student_layers < 1 or teacher_layers < 1:
        raise LayerMapError(f"layer counts must be positive (student {student_layers}, teacher {teacher_layers})")
    if isinstance(spec, (list, tuple)):
        mapping = [int(x) for x in spec]
        if len(mapping) != student_layers:
            raise LayerMapError(
                f"explicit layer_map has {len(mapping)} entries but the student has {student_layers} layers; "
                "give one teacher layer (1..{}) per student layer".format(teacher_layers)
            )
        bad = [x for x in mapping if not 1 <= x <= teacher_layers]
        if bad:
            raise LayerMapError(f"layer_map entries {bad} are outside the teacher's layers 1..{teacher_layers}")
        if any(b <= a for a, b in zip(mapping, mapping[1:])):
            raise LayerMapError(f"layer_map {mapping} must be strictly increasing (deeper student layers learn from deeper teacher layers)")
        return mapping
    if student_layers > teacher_layers:
        raise LayerMapError(
            f"a {student_layers}-layer student cannot map onto a {teacher_layers}-layer teacher; "
            "use at most as many student layers as teacher layers"
        )
    if spec == "uniform":
        if teacher_layers % student_layers:
            raise LayerMapError(
                f"uniform mapping needs the teacher depth ({teacher_layers}) to be a multiple of the student depth "
                f"({student_layers}); use 'top', 'bottom' or an explicit list"
            )
        step = teacher_layers // student_layers
        return [step * (i + 1) for i in range(student_layers)]
    if spec == "top":
        return list(range(teacher_layers - student_layers + 1, teacher_layers + 1))
    if spec == "bottom":
        return list(range(1, student_layers + 1))
    raise LayerMapError(f"unknown layer_map {spec!r}: use 'uniform', 'top', 'bottom' or a list of teacher layers")


def check_heads(student_heads: int, teacher_heads: int) -> None:
    """Attention maps are compared per student head: one to one when the counts match, otherwise each student head
    against the mean of a group of teacher heads (kdistill.distill.losses.group_heads), so the student's count must divide
    the teacher's."""
    if teacher_heads % student_heads:
        raise LayerMapError(
            f"attention distillation compares each student head with a group of teacher heads: the student has "
            f"{student_heads} heads, the teacher {teacher_heads}; give the student a number of heads that divides "
            f"{teacher_heads} (its hidden size must be a multiple of it) or set the attention weight to 0"
        )
