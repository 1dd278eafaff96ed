"""The one dtype table: safetensors codes, and the output dtypes a recipe may name."""

from __future__ import annotations

import torch

SAFETENSORS_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPE_OF_CODE: dict[str, torch.dtype] = {code: dtype for dtype, code in SAFETENSORS_CODES.items()}
OUTPUT_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                                         "float32": torch.float32}
COMPUTE = torch.float32  # every method computes in float32 on the device (small cores in float64)
