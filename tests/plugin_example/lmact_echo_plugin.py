"""A third-party lmact provider: `echo/<text>` answers <text> at every step."""

from collections.abc import Sequence

from lmact.models.base import (
    ModelClient,
    ModelRequest,
    ModelResponse,
    Part,
    estimate_tokens,
)


class EchoModel(ModelClient):
    max_concurrency = 4  # requests in flight at once, unless --max-connections says otherwise

    def count_tokens(self, parts: Sequence[Part]) -> int:
        return estimate_tokens(parts)  # used to pack demonstrations into a token budget

    async def complete(self, request: ModelRequest) -> ModelResponse:
        answer = self.name.partition("/")[2]  # the model name after "echo/"
        return ModelResponse(
            text=answer,
            prompt_tokens=self.count_tokens(request.parts),
            completion_tokens=1,
        )
