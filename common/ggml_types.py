"""ggml tensor types and llama.cpp file types: the tables the GGUF reader needs."""

from __future__ import annotations

from dataclasses import dataclass

QK_K = 256


@dataclass(frozen=True)
class GGMLType:
    """A tensor type: ``block_size`` elements are stored in ``type_size`` bytes."""

    name: str
    block_size: int
    type_size: int


# ggml type id -> layout (ggml.h ``enum ggml_type`` and ggml-common.h block sizes).
# Removed ids (4, 5, 31-33, 36-38) are absent and therefore unsupported.
GGML_TYPES: dict[int, GGMLType] = {
    0: GGMLType("F32", 1, 4),
    1: GGMLType("F16", 1, 2),
    2: GGMLType("Q4_0", 32, 2 + 16),
    3: GGMLType("Q4_1", 32, 2 + 2 + 16),
    6: GGMLType("Q5_0", 32, 2 + 4 + 16),
    7: GGMLType("Q5_1", 32, 2 + 2 + 4 + 16),
    8: GGMLType("Q8_0", 32, 2 + 32),
    9: GGMLType("Q8_1", 32, 2 + 2 + 32),
    10: GGMLType("Q2_K", QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    11: GGMLType("Q3_K", QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),
    12: GGMLType("Q4_K", QK_K, 2 + 2 + QK_K // 2 + 12),
    13: GGMLType("Q5_K", QK_K, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    14: GGMLType("Q6_K", QK_K, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    15: GGMLType("Q8_K", QK_K, 4 + QK_K + QK_K // 8),
    16: GGMLType("IQ2_XXS", QK_K, 2 + QK_K // 4),
    17: GGMLType("IQ2_XS", QK_K, 2 + QK_K // 4 + QK_K // 32),
    18: GGMLType("IQ3_XXS", QK_K, 2 + QK_K // 4 + QK_K // 8),
    19: GGMLType("IQ1_S", QK_K, 2 + QK_K // 8 + QK_K // 16),
    20: GGMLType("IQ4_NL", 32, 2 + 16),
    21: GGMLType("IQ3_S", QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    22: GGMLType("IQ2_S", QK_K, 2 + QK_K // 4 + QK_K // 16),
    23: GGMLType("IQ4_XS", QK_K, 2 + 2 + QK_K // 2 + QK_K // 64),
    24: GGMLType("I8", 1, 1),
    25: GGMLType("I16", 1, 2),
    26: GGMLType("I32", 1, 4),
    27: GGMLType("I64", 1, 8),
    28: GGMLType("F64", 1, 8),
    29: GGMLType("IQ1_M", QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    30: GGMLType("BF16", 1, 2),
    34: GGMLType("TQ1_0", QK_K, 2 + 4 * 13),
    35: GGMLType("TQ2_0", QK_K, 2 + 64),
    39: GGMLType("MXFP4", 32, 1 + 16),
}

# ``general.file_type`` (llama.h ``enum llama_ftype``) -> the name people use.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}
