"""Check that the embedded model answers on this machine: exit 0 if it does.

llama-cpp-python builds llama.cpp from source; a native build uses every instruction set
the CPU reports. Some virtual machines report AMX without enabling it, and such a build
crashes at the first completion. `.ci/run` uses this check to rebuild portably.
"""

from __future__ import annotations

import asyncio
import sys

from lmact.models.base import ModelOptions, ModelRequest, TextPart
from lmact.models.local import LocalModel


def main() -> int:
    model = LocalModel("local/gemma-3-270m", ModelOptions(threads=1, context_window=512))
    request = ModelRequest(
        parts=(TextPart("Observation: a1 is free\n"),), answer_prefix="Action:", max_tokens=2
    )
    response = asyncio.run(model.complete(request))
    print(f"the local model answers ({response.prompt_tokens} prompt tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
