"""Rewrites a GGUF with every 2-D weight as F16 or Q8_0, for the llama.cpp
yardstick (scripts/bench-llama-cpp.sh): llama.cpp's F16 and Q8_0 forms of the
full-precision model, made with gguf-py (llama.cpp's own Python package)
because the npm build of llama.cpp has no `llama-quantize`.

The source's tensors are dequantized with `gguf.quants.dequantize` (exactly
the f32 weights our GGUF loader gives the full-precision model) and written
as F16 (`np.float16` rounding) or Q8_0 (`gguf.quants.quantize`, llama.cpp's
reference quantizer); 1-D tensors (norms) stay F32. Every metadata key except
`general.file_type` is copied unchanged (tokenizer included).

    python scripts/gguf/requant.py IN.gguf OUT.gguf f16|q8_0
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V
from gguf.quants import dequantize, quantize

FILE_TYPE = {"f16": 1, "q8_0": 7}  # llama_ftype MOSTLY_F16, MOSTLY_Q8_0


def main() -> int:
    src, dst, kind = sys.argv[1:4]
    if kind not in FILE_TYPE:
        print(f"error: type `{kind}` is not f16 or q8_0", file=sys.stderr)
        return 2
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == V.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(FILE_TYPE[kind])
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        if values.ndim < 2 or values.shape[-1] % 32:
            writer.add_tensor(t.name, values)
        elif kind == "f16":
            writer.add_tensor(t.name, values.astype(np.float16))
        else:
            writer.add_tensor(t.name, quantize(values, Q.Q8_0), raw_dtype=Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
